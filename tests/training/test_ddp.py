"""Two-process CPU DDP (gloo) through torchrun: the distributed path of the trainer runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from model.checkpoint import load_checkpoint
from tests.tools import free_port


@pytest.mark.slow
def test_two_process_gloo_ddp(tiny, tmp_path):
    cfg = tiny(1, "ddp", 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "training.cli", "stage1", "--config", str(cfg),
           "--resume", "none", "--set", "run.threads=1", "optim.grad_accum=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "final.pt")
    assert ck.training["world_size"] == 2 and ck.training["steps"] == 1
