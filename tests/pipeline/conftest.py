"""Fixtures for the whole-loop tests: a tiny seeded checkpoint and small phantom CT studies.

The checkpoint is the small configuration with random (seeded) weights: these tests prove the
mechanics (states, executors, encoding, delivery, crash recovery), not segmentation quality,
which `dsm-train eval` and the bundled demo weights' model card cover.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import LoopbackNet


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from model.catalog import load_catalog
    from model.checkpoint import save_checkpoint
    from model.config import load_model_config
    from model.network import DSMNet
    from model.text import load_default_table

    torch.manual_seed(0)
    cfg = load_model_config("small").replace(**{"backbone.feature_size": 12, "decoder.query_dim": 32})
    catalog = load_catalog()
    table = load_default_table()
    embeddings = torch.stack([table.get(p) for p in catalog.prompt_names])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, DSMNet(cfg), catalog, embeddings, version="test-tiny-0")


def write_phantom_study(folder: Path, seed: int = 3, uid_seed: str | None = None) -> list[Path]:
    """A 24-slice phantom CT whose model grid is one 64^3 window (fast on CPU)."""
    from training.phantoms import make_phantom, write_dicom_series

    image, _label, affine = make_phantom(seed, shape=(32, 32, 24), spacing=(6.0, 6.0, 4.5))
    return write_dicom_series(image, affine, folder, uid_seed=uid_seed or f"pipeline-test-{seed}")


@pytest.fixture
def phantom_study(tmp_path) -> Path:
    folder = tmp_path / "study"
    write_phantom_study(folder)
    return folder


@pytest.fixture(scope="module")
def net():
    n = LoopbackNet()
    yield n
    n.close()
