"""Operator commands read the node's database and never create one (the reported defect:
``dsm-node studies`` run outside the data directory made an empty ./var/dsm-node.db and printed
an empty table as if the node had received nothing)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dsm_node.context import build_context
from dsm_node.settings import load_settings
from tests.tools import REPO

COMMANDS = [["studies"], ["audit"], ["deliveries"], ["resend", "--all-dead"], ["fsck"]]


def run(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_NODE__")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "dsm_node", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_without_a_node_database_nothing_is_created(tmp_path, command):
    done = run(tmp_path, *command)
    assert done.returncode == 2 and done.stdout == ""
    expected = f"dsm-node {command[0]}: no node database at {tmp_path / 'var' / 'dsm-node.db'} (storage.data_dir is var)"
    assert done.stderr.startswith(expected) and "nothing was created" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # no ./var, no empty database


def test_with_the_node_data_dir_they_say_which_database_they_opened(tmp_path):
    data = tmp_path / "node"
    build_context(load_settings(None, {"storage.data_dir": str(data)})).close()  # what serve leaves
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run(elsewhere, "studies", "--data-dir", str(data), "--json")
    assert done.returncode == 0 and done.stdout.strip() == "[]"
    assert done.stderr == f"dsm-node studies: database sqlite:///{(data / 'dsm-node.db').resolve()}\n"
    assert list(elsewhere.iterdir()) == []


def test_a_postgresql_database_without_the_schema_is_refused(tmp_path):
    from dsm_node.db.engine import current_revision
    from dsm_node.settings import display_url
    from tests.pg import postgres_server

    with postgres_server() as server:
        url = server.new_database()
        done = run(tmp_path, "studies", "--config", str(_config(tmp_path, url)))
        assert done.returncode == 2 and f"the database {display_url(url)} holds no dsm-node tables" in done.stderr
        assert current_revision(url) is None  # not migrated: nothing created there either


def _config(tmp_path, url):
    path = tmp_path / "node.yaml"
    path.write_text(f"database:\n  url: {url}\n")
    return path
