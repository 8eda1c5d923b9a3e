import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "volume"))  # ctsynth


@pytest.fixture(scope="session")
def catalog():
    from model.catalog import load_catalog

    return load_catalog()
