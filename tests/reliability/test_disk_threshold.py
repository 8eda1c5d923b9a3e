"""Resources (issue 7): at the free-space threshold the SCP refuses with 0xA700, audits it, and
leaves no partial file. (The quota variant is tests/receive/test_scp.py::
test_quota_refuses_with_a700_and_leaves_nothing_half_written; the spool-level check is
tests/receive/test_spool.py::test_quota_and_free_space_refuse_before_writing.)"""
from __future__ import annotations

import json

from tests.receive.receive_helpers import Node, echo, store
from tests.support.ct import write_ct_series


def test_free_space_threshold_refuses_with_a700_audited_and_nothing_written(tmp_path):
    series = write_ct_series(tmp_path / "s", 5, 64)
    node = Node(tmp_path / "node", config={"storage": {"min_free_bytes": 2**60}}).start()
    try:
        answers = store(node.port, series.files)
        assert [s for s, _ in answers] == [0xA700] * 5
        assert all(c and "free" in c.lower() for _, c in answers), answers
        full = node.wait_audit("storage_full")
        assert len(full) == 1  # one per association, not one per instance
        row = full[0]
        detail = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
        assert row.event_code == "110113" and row.outcome == 12 and detail["status"] == "0xA700"
        assert node.spool_files() == [] and node.instance_uids() == set()
        leftovers = [p for p in node.spool.rglob("*") if p.is_file()] if node.spool.exists() else []
        assert leftovers == []  # no temp file either
        assert echo(node.port) == 0 and node.proc.poll() is None
    finally:
        node.close()
