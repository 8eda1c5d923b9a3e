"""scripts/gpu-demo-weights.sh, the one-shot GPU session, runs end to end (here on the CPU with a
few steps): a lent GPU is rare and short, so the script must not first fail there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ("data.train.phantoms.n=2 data.val.phantoms.n=1 data.val_max_cases=1 optim.max_steps=1 optim.batch_size=1 "
        "crop.samples_per_volume=1 data.num_workers=0 run.threads=2 align_class_steps=2")


@pytest.mark.slow
def test_gpu_session_script_runs_and_leaves_few_files(tmp_path):
    out = tmp_path / "out"
    # OUT and RUNS relative to the caller's folder (not the repository the script moves to)
    env = dict(os.environ, OUT="out", RUNS="runs", PY=sys.executable, SHAPE="64 64 32",
               SET1=TINY, SET2=TINY, VAL="phantom:900:1", S1_MIN="10", S2_MIN="10")
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu-demo-weights.sh")], env=env, capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    # the lent machine returns at most 8 files
    assert files == ["candidate.pt", "eval_val_summary.json", "segment.json", "session.log", "training.tar.gz"]
    summary = json.loads((out / "eval_val_summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["checkpoint_version"] == "dsm-small-demo-gpu"
    timing = json.loads((out / "segment.json").read_text())
    assert timing["small"]["source_shape"] == [64, 64, 32] and timing["small"]["timings_s"]["inference_s"] > 0
    with tarfile.open(out / "training.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"stage1/metrics.csv", "stage2/channel_health.csv", "stage2.log"} <= names
    assert (tmp_path / "runs" / "stage2" / "final.pt").exists() and not (REPO / "out").exists()
    log = (out / "session.log").read_text()
    assert "Stage 1" in log and "Stage 2" in log and "done:" in log
