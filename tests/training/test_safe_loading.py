"""Checkpoints and training states load with torch.load(weights_only=True) (issue 18): no code
in a file runs; legacy states load only with --trust-legacy-checkpoint."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.trainer import UntrustedCheckpoint, load_payload, rng_state, set_rng_state


class _Payload:
    """Pickles to a call of print(): a stand-in for any code a hostile file could run."""

    def __reduce__(self):  # noqa: ANN204
        return (print, ("CODE RAN FROM A CHECKPOINT",))


def _draw() -> tuple[float, float, float]:
    return float(np.random.rand()), random.random(), float(torch.rand(1))


def test_training_state_rng_is_weights_only_loadable(tmp_path):
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    path = tmp_path / "state.pt"
    torch.save({"format": "x", "rng": rng_state(), "step": 7}, path)
    expected = _draw()
    payload = load_payload(path)  # weights_only=True
    set_rng_state(payload["rng"])
    assert _draw() == expected and payload["step"] == 7


def test_legacy_states_need_the_opt_in_and_hostile_files_never_run(tmp_path, capsys):
    legacy = tmp_path / "legacy.pt"
    torch.save({"rng": {"numpy": np.random.get_state()}}, legacy)
    with pytest.raises(UntrustedCheckpoint, match="--trust-legacy-checkpoint"):
        load_payload(legacy)
    assert load_payload(legacy, trust_legacy=True)["rng"]["numpy"][0] == "MT19937"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": _Payload()}, hostile)
    with pytest.raises(UntrustedCheckpoint):
        load_payload(hostile)
    assert "CODE RAN" not in capsys.readouterr().out


def test_cli_offers_the_opt_in():
    from training.cli import build_parser

    args = build_parser().parse_args(["stage2", "--config", "x.yaml", "--init", "s1.pt", "--trust-legacy-checkpoint"])
    assert args.trust_legacy_checkpoint is True
    assert build_parser().parse_args(["stage1", "--config", "x.yaml"]).trust_legacy_checkpoint is False
