"""Downstream fault (issue 7): PostgreSQL stops and starts while storescu is sending.

tests/receive/test_durability.py::test_database_outage_refuses_and_recovers proves the outage
between associations (pynetdicom). Here the database goes away in the middle of one running
storescu association and comes back during the next one: every C-STORE answered while it is
down must be a refusal (0xA710, never a Success that could not be recorded), every Success must
be in the database and the spool, and the node must recover by itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time

from tests.receive.receive_helpers import Node, echo
from tests.support.ct import write_ct_series
from tests.tools import require_tool

N = 150


def run_storescu(port: int, files, on_answer=None) -> list[tuple[str, int]]:
    """storescu -d -nh (debug: the response's Status is dumped); (file, status) per response."""
    exe = require_tool("storescu")
    proc = subprocess.Popen([exe, "-d", "-nh", "-aec", "DSMNODE", "127.0.0.1", str(port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})
    answers, current, in_response = [], None, False
    for line in proc.stdout:  # type: ignore[union-attr]
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line:
            in_response = True
        elif in_response and "DIMSE Status" in line:
            status = int(re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", line).group(1), 16)
            answers.append((current, status))
            in_response = False
            if on_answer is not None:
                on_answer(len(answers))
    proc.wait(timeout=120)
    return answers


def test_postgres_stopped_and_started_mid_association(tmp_path, postgres):
    series = write_ct_series(tmp_path / "s", N, 64)
    by_file = dict(zip(map(str, series.files), series.sop_instance_uids))
    node = Node(tmp_path / "node", db_url=postgres.new_database()).start()
    stopped = threading.Event()

    def stop_after_30(count: int) -> None:
        if count == 30 and not stopped.is_set():
            stopped.set()
            postgres.stop(mode="immediate")

    try:
        first = run_storescu(node.port, series.files, stop_after_30)
        assert stopped.is_set()
        ok = [f for f, s in first if s == 0]
        refused = [s for f, s in first if s != 0]
        # While the database is down, refusals only: 0xA710 (out of resources: index unavailable).
        assert refused, "the outage produced no refusal"
        assert set(refused) == {0xA710}, {hex(s) for s in refused}
        assert echo(node.port) == 0  # the node is up and answering
        spool_during = len(node.spool_files())
        assert spool_during == len(ok), (spool_during, len(ok))  # no file without a row to come

        # The database comes back while the next association runs: no restart of the node.
        restarter = threading.Timer(1.0, postgres.start)
        restarter.start()
        deadline, second = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            second = run_storescu(node.port, series.files)
            if second and all(s == 0 for _, s in second):
                break
            time.sleep(0.5)
        restarter.join()
        assert len(second) == N and all(s == 0 for _, s in second), {hex(s) for _, s in second}
        assert node.instance_uids() == set(series.sop_instance_uids)
        assert len(node.spool_files()) == N
        assert {by_file[f] for f in ok} <= node.instance_uids()
        assert node.proc.poll() is None
        # The SQL audit trail cannot take rows while it is down: the refusals are in the JSON log.
        logged = [line for line in node.output if "index unavailable" in line or "audit write failed" in line]
        assert logged, "the outage left no trace in the log"
        print(f"\ndatabase outage mid-association: {len(ok)} stored before, {len(refused)} refused with 0xA710 "
              f"during it, all {N} stored after PostgreSQL came back without restarting the node; "
              f"{len(logged)} log lines record the outage")
    finally:
        if not postgres_running(postgres):
            postgres.start()
        node.close()


def postgres_running(postgres) -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(postgres.url()).connect():
            return True
    except Exception:  # noqa: BLE001
        return False
