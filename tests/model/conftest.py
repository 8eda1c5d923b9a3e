"""Fixtures for the model tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def text_table() -> torch.Tensor:
    """The shipped 45-class CLIP table, L2-normalised, catalog order."""
    from model.catalog import load_catalog
    from model.text import class_embeddings

    return class_embeddings(load_catalog())
