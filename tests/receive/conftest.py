"""Fixtures of the receiving-side tests: synthetic series, nodes in subprocesses, databases.

``db_url`` runs a test against SQLite (embedded default) and a real throw-away PostgreSQL.
"""
from __future__ import annotations

import pytest

from tests.pg import postgres_server
from tests.receive.receive_helpers import Node
from tests.support.ct import write_ct_series


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return None  # SQLite under the node's data dir (the default)
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def series_dir(tmp_path_factory):
    """A small synthetic CT series (12 instances, 64x64) shared read-only by the tests."""
    return write_ct_series(tmp_path_factory.mktemp("series"), 12, 64)


@pytest.fixture
def node_factory(tmp_path):
    nodes: list[Node] = []

    def make(name: str = "node", **kwargs) -> Node:
        node = Node(tmp_path / name, **kwargs)
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.close()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One default node (loopback only, ignore non-CT) for the tests that need nothing special."""
    node = Node(tmp_path_factory.mktemp("shared-node"))
    node.start()
    yield node
    node.close()
