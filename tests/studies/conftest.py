"""Every database test here runs on SQLite (embedded default) and on a real PostgreSQL."""
import pytest

from dsm_node.context import build_context
from dsm_node.settings import load_settings
from tests.pg import postgres_server


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_ctx(request, tmp_path):
    """A factory of migrated node contexts; keyword overrides use dotted keys."""
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    made = []

    def make(**overrides):
        ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path, "database.url": url, **overrides}))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()
