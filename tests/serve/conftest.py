"""``db_url``: the node process runs on SQLite (embedded default) and on a real PostgreSQL."""
import pytest

from tests.pg import postgres_server


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request):
    return request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
