"""Fixtures of the training tests (configurations: training_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.training_helpers import tiny_config


@pytest.fixture
def tiny(tmp_path):
    def make(stage: int, out: str, steps: int, **extra) -> Path:
        return tiny_config(tmp_path, stage, out, steps, **extra)

    return make
