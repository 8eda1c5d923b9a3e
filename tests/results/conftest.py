import pytest


@pytest.fixture(scope="session")
def catalog():
    from model.catalog import load_catalog

    return load_catalog()
