"""Durability: kill -9 mid-session, start-up reconciliation, database outage (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zlib

from pydicom import dcmread
from pydicom.uid import generate_uid

from dsm_node.context import build_context
from dsm_node.receive.dataset import file_meta_bytes
from dsm_node.receive.reconcile import reconcile
from dsm_node.settings import load_settings
from dsm_node.spool import relative_path
from tests.receive.receive_helpers import Node, body_of, echo, store
from tests.support.ct import ct_dataset, write_ct_series
from tests.tools import require_tool

SUCCESS = 0x0000


def detail(row):
    return row.detail if isinstance(row.detail, dict) else json.loads(row.detail)


def acknowledged_files(output: str) -> list[str]:
    """Files storescu -v reports as stored with Success."""
    done, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            if "(Success)" in line:
                done.append(current)
            current = None
    return done


def test_kill_9_mid_session_loses_no_acknowledged_instance(tmp_path, db_url):
    exe = require_tool("storescu")
    series = write_ct_series(tmp_path / "series", 100, 128)
    node = Node(tmp_path / "node", db_url=db_url).start()
    try:
        env = {**os.environ, "TCP_NODELAY": "1"}
        proc = subprocess.Popen([exe, "-v", "-aec", "DSMNODE", "127.0.0.1", str(node.port),
                                 *map(str, series.files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.monotonic() + 60
        while sum(1 for line in out if "(Success)" in line) < 25 and time.monotonic() < deadline:
            time.sleep(0.005)
        node.kill9()  # mid-session: storescu is still sending
        proc.wait(timeout=60)
        reader.join(timeout=10)
        acked = acknowledged_files("".join(out))
        assert 25 <= len(acked) < len(series.files), "the kill did not land mid-session"

        node.start()  # restart on the same data dir: reconcile runs before the SCP accepts
        by_path = {str(f): uid for f, uid in zip(series.files, series.sop_instance_uids)}
        indexed = node.instance_uids()
        on_disk = {p.stem for p in node.spool_files() if p.suffix == ".dcm"}
        for path in acked:
            uid = by_path[path]
            assert uid in indexed, f"acknowledged {uid} missing from the index"
            assert uid in on_disk, f"acknowledged {uid} missing from the spool"
        # Nothing half-written, and spool and index agree exactly.
        assert all(not p.name.startswith(".") for p in node.spool_files())
        assert on_disk == indexed
        for uid in list(indexed)[:5]:
            f = node.spool / relative_path(series.study_uid, series.series_uid, uid)
            src = next(p for p, u in zip(series.files, series.sop_instance_uids) if u == uid)
            assert body_of(f) == body_of(src)
        assert node.wait_audit("spool_reconciled", 2)
        # The sender's retry completes the study: duplicates are Success, the rest is stored.
        retry = subprocess.run([exe, "-aec", "DSMNODE", "127.0.0.1", str(node.port), *map(str, series.files)],
                               capture_output=True, text=True, env=env, timeout=120)
        assert retry.returncode == 0, retry.stderr
        assert node.instance_uids() == set(series.sop_instance_uids)
    finally:
        node.close()


def test_reconcile_indexes_orphans_and_cleans_temp_files(tmp_path, db_url):
    settings = load_settings(None, {"storage.data_dir": str(tmp_path / "data"), "database.url": db_url})
    ctx = build_context(settings)
    try:
        study, series = generate_uid(), generate_uid()
        spool = settings.storage.spool_dir

        def place(uid, name=None, content=None):
            ds = ct_dataset(study_uid=study, series_uid=series, frame_uid=generate_uid(), index=0, sop_instance_uid=uid)
            rel = relative_path(study, series, uid)
            path = spool / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(tmp_path / "source.dcm", enforce_file_format=True)
            data = file_meta_bytes(str(ds.SOPClassUID), uid, "1.2.840.10008.1.2", "PACS") + body_of(tmp_path / "source.dcm")
            (path.parent / (name or path.name)).write_bytes(content if content is not None else data)
            return data

        orphan = generate_uid()
        place(orphan)  # acknowledged, but its row was lost (power failure with synchronous=NORMAL)
        lost_rename = generate_uid()
        data = place(lost_rename, name="placeholder")
        (spool / study / series / "placeholder").unlink()
        (spool / study / series / f".{lost_rename}.dcm.{len(data)}-{zlib.crc32(data):08x}.x1y2z3.tmp").write_bytes(data)
        partial = generate_uid()
        place(partial, name=f".{partial}.dcm.999999-00000000.a1b2c3.tmp", content=b"partial")
        broken = generate_uid()
        place(broken, content=b"not dicom")

        report = reconcile(ctx)
        assert (report.indexed, report.temp_files_removed, report.temp_files_completed) == (2, 1, 1)
        assert report.quarantined == [relative_path(study, series, broken)]
        from sqlalchemy import select

        from dsm_node.db.models import Instance, Study

        with ctx.sessions() as s:
            rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
            assert set(rows) == {orphan, lost_rename}
            assert rows[orphan].calling_ae == "PACS"  # from the file's Source AE Title
            assert s.scalars(select(Study)).one().instance_count == 2
        names = sorted(p.name for p in (spool / study / series).iterdir())
        assert names == sorted([f"{orphan}.dcm", f"{lost_rename}.dcm"])
        assert (settings.storage.data_dir / "quarantine").is_dir()
        assert dcmread(spool / relative_path(study, series, lost_rename)).SOPInstanceUID == lost_rename
        # Idempotent: a second run finds nothing to do.
        again = reconcile(ctx)
        assert (again.indexed, again.temp_files_removed, again.already_indexed) == (0, 0, 2)
        with ctx.sessions() as s:
            from dsm_node.audit import query_events

            events = query_events(s, event_type="spool_reconciled")
        assert detail(events[0])["indexed"] == 2 and detail(events[0])["temp_files_completed"] == 1
    finally:
        ctx.close()


def test_database_outage_refuses_and_recovers(tmp_path, postgres):
    series = write_ct_series(tmp_path / "s", 3, 64)
    node = Node(tmp_path / "node", db_url=postgres.new_database()).start()
    try:
        assert store(node.port, series.files[:1]) == [(SUCCESS, None)]
        postgres.stop()
        try:
            status, comment = store(node.port, series.files[1:2])[0]
            assert status == 0xA710 and "database unavailable" in comment
            # Nothing acknowledged that could not be recorded: no file left behind.
            assert len(node.spool_files()) == 1
            assert echo(node.port) == SUCCESS  # still running and answering
        finally:
            postgres.start()
        assert [s for s, _ in store(node.port, series.files)] == [SUCCESS] * 3
        assert node.instance_uids() == set(series.sop_instance_uids)
        assert node.proc.poll() is None
        assert any("index unavailable" in line or "audit write failed" in line for line in node.output)
    finally:
        node.close()
