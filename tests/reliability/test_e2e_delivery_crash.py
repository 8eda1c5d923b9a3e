"""One whole-loop run, several promises checked on it (issue 7: crash safety, security, admin view).

A synthetic CT study carrying a recognisable probe patient name and ID goes through a real
``dsm-node serve`` (tiny seeded checkpoint, local executor) inside the loopback-only network
namespace. The PACS is a pynetdicom peer that takes 3 s per C-STORE; the node is SIGKILLed while
it is sending the results, restarted, and must finish the delivery. The same run then serves the
status page (checked in headless Chromium), its logs are searched for the patient's name and ID,
its listening sockets are inspected, and retention (max age 0) removes the delivered data.

The restarted node takes back the leases its killed predecessor held at once (its process is
known to have ended, dsm_node.liveness), not after they expire: the lease (4 x timeout_s + 60 s
= 100 s here) is left as it is, and the test checks that the rows were taken back before it
ran out.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from sqlalchemy import select

from dsm_node.db.models import AuditEvent, Delivery, Job, Result, Study
from tests.nodeproc import NodeProcess
from tests.peers import ScriptedSCP
from tests.support.ct import write_ct_series
from tests.tools import REPO, free_port, require_tool

PATIENT_NAME = "Leakprobe^Reliability"
PATIENT_ID = "RLB-PID-424242"
ARTIFACTS = REPO / "tests" / "artifacts" / "status"

pytestmark = pytest.mark.slow  # ~60-90 s on 2 busy cores (inference on the tiny checkpoint)


def _rows(node: NodeProcess, model, *where):
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            return list(s.scalars(select(model).where(*where).order_by(model.id)))
    finally:
        ctx.close()


def _wait(what: str, fn, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_checkpoint, net):
    root = tmp_path_factory.mktemp("e2e")
    series = write_ct_series(root / "study", 24, 32)
    for path in series.files:  # the probe identity whose absence from the logs is checked
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(path, enforce_file_format=True)
    pacs = ScriptedSCP(net, free_port(), delay_s=3.0).start()
    extra = "\n".join([
        "inference:", f"  checkpoint: {tiny_checkpoint}", "  device: cpu",
        "executor:", "  kind: local", "  heartbeat_interval_s: 0.5", "  stale_after_s: 4",
        "delivery:",
        f"  destinations: [{{name: pacs, ae_title: PACS, host: 127.0.0.1, port: {pacs.port}}}]",
        "  backoff_initial_s: 0.5", "  backoff_max_s: 2", "  timeout_s: 10",
        "retention:", "  delivered_max_age_h: 0", "  interval_s: 1",
    ]) + "\n"
    node = NodeProcess(root / "node", quiet_period_s=1, net=net, extra_yaml=extra)
    info: dict = {"node": node, "pacs": pacs, "series": series, "t0": time.monotonic()}
    try:
        node.start()
        sent = node.send(root / "study")
        assert sent.returncode == 0, sent.stderr
        # Wait until the results are being sent, then kill the node mid-send.
        _wait("a delivery in progress", lambda: _rows(node, Delivery, Delivery.state == "in_progress"), 300)
        time.sleep(1.0)  # inside the PACS's 3 s answer delay of the first C-STORE
        node.kill9()
        info["received_before_restart"] = list(pacs.received)
        in_progress = _rows(node, Delivery, Delivery.state == "in_progress")
        info["in_progress_at_kill"] = [d.id for d in in_progress]
        info["lease_expiry"] = min(d.next_attempt_at for d in in_progress) if in_progress else None
        pacs._delay = 0.0
        restart = time.monotonic()
        node.start()
        # Resumed: the killed sender's rows are taken back (audited as interrupted attempts).
        _wait("the interrupted deliveries taken back", lambda: [
            e for e in _rows(node, AuditEvent, AuditEvent.event_type == "delivery_attempt")
            if e.detail.get("status") == "interrupted"], 120)
        info["restart_to_resumed_s"] = time.monotonic() - restart
        info["job"] = _wait("the job delivered",
                            lambda: next(iter(_rows(node, Job, Job.state == "delivered")), None), 120)
        info["restart_to_delivered_s"] = time.monotonic() - restart
        info["wall_s"] = time.monotonic() - info["t0"]
        yield info
    finally:
        node.close()
        pacs.stop()


def test_kill_during_delivery_pacs_gets_each_result_once(loop):
    job, pacs = loop["job"], loop["pacs"]
    # Every result object of the job: the SR, the SEG if anything was found, and the key images.
    results = _rows(loop["node"], Result, Result.job_id == job.id)
    expected = {r.sop_instance_uid for r in results}
    assert job.summary["sr_sop_instance_uid"] in expected
    if job.summary.get("seg_sop_instance_uid"):
        assert job.summary["seg_sop_instance_uid"] in expected
    assert sum(r.kind == "SC" for r in results) == job.summary["key_images"]
    received = list(pacs.received)
    print(f"\nkill during delivery: PACS saw {len(loop['received_before_restart'])} C-STORE(s) before the kill, "
          f"{len(received)} in all ({len(set(received))} distinct SOP Instance UIDs); expected {len(expected)}; "
          f"restart -> interrupted deliveries taken back {loop['restart_to_resumed_s']:.1f} s, "
          f"-> job delivered {loop['restart_to_delivered_s']:.1f} s (lease 100 s); loop wall {loop['wall_s']:.0f} s")
    assert loop["in_progress_at_kill"], "the node was not killed mid-delivery"
    # Exactly one SOP Instance UID per result: a repeat after the crash overwrites, never adds.
    assert set(received) == expected
    deliveries = _rows(loop["node"], Delivery)
    assert deliveries and all(d.state == "delivered" for d in deliveries)
    assert any(d.attempts >= 2 for d in deliveries)
    # The interruption is in the audit trail.
    attempts = _rows(loop["node"], AuditEvent, AuditEvent.event_type == "delivery_attempt")
    interrupted = [e for e in attempts if e.detail.get("status") == "interrupted"]
    assert interrupted and all(e.outcome == 8 for e in interrupted)
    assert "stopped before recording an outcome" in interrupted[0].detail["error"]
    # Taken back because the sender's process ended, while its lease still ran: not by expiry.
    assert all(e.detail["error"].endswith("(its process ended)") for e in interrupted)
    assert max(e.time for e in interrupted) < loop["lease_expiry"]
    starts = _rows(loop["node"], AuditEvent, AuditEvent.event_type == "application_start")
    stops = _rows(loop["node"], AuditEvent, AuditEvent.event_type == "application_stop")
    assert len(starts) == 2 and len(stops) == 0  # the kill left no stop event: visible as such


def test_no_patient_name_or_id_in_logs_or_stdout(loop):
    node: NodeProcess = loop["node"]
    logs = [*node.root.glob("stdout-*.log"), *node.root.glob("stderr-*.log"), *(node.data_dir / "logs").glob("*")]
    assert any(p.name.endswith(".jsonl") for p in logs) and sum(p.stat().st_size for p in logs) > 10_000
    # The probe really is in the data the node handled.
    assert pydicom.dcmread(loop["series"].files[0]).PatientID == PATIENT_ID
    variants = {PATIENT_NAME, PATIENT_ID, PATIENT_NAME.replace("^", " "), "Leakprobe", "424242"}
    for path in logs:
        text = path.read_text(errors="replace")
        for needle in variants:
            assert needle not in text, f"{needle!r} found in {path}"
    print(f"\nlogs searched: {len(logs)} files, {sum(p.stat().st_size for p in logs)} bytes, no patient name/ID")


def listening_sockets(pid: int) -> dict[int, str]:
    """Listening TCP port -> address of a process, read from /proc/PID (its own network
    namespace; psutil's net_connections reads the caller's namespace's table and finds nothing
    for a process inside the loopback-only namespace)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: dict[int, str] = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            if width == 8:
                ip = ".".join(str(int(hex_ip[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::1" if hex_ip == "00000000000000000000000001000000" else hex_ip
            found[int(hex_port, 16)] = ip
    return found


def test_http_listens_on_loopback_only(loop):
    node: NodeProcess = loop["node"]
    from dsm_node.settings import load_settings

    assert load_settings(None).http.host == "127.0.0.1"  # the default
    assert "\nhttp:" not in node.config.read_text()  # the node under test runs with that default
    proc = psutil.Process(node.proc.pid)
    pids = [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    ports: dict[int, str] = {}
    for pid in pids:
        ports.update(listening_sockets(pid))
    print(f"\nnode listening sockets: {ports}")
    assert ports.get(node.http_port) == "127.0.0.1", ports
    assert ports.get(node.port) == "127.0.0.1", ports
    assert all(ip in ("127.0.0.1", "::1") for ip in ports.values()), ports


def test_status_page_shows_the_run_without_patient_data(loop):
    node: NodeProcess = loop["node"]
    job = loop["job"]
    # Retention (max age 0, every second) removes the delivered study's files.
    events = _wait("retention_deleted", lambda: _rows(node, AuditEvent, AuditEvent.event_type == "retention_deleted"), 30)
    assert events[0].study_uid == loop["series"].study_uid and events[0].detail["instances_deleted"] == 24
    assert not any((node.data_dir / "spool" / loop["series"].study_uid).rglob("*.dcm"))

    status, page = node.get("/status")
    assert status == 200
    study = _rows(node, Study)[0]
    assert loop["series"].study_uid in page and study.selected_series_uid in page
    assert job.summary["sr_sop_instance_uid"] in page
    assert '<meta http-equiv="refresh"' in page
    for section in ('id="studies"', 'id="jobs"', 'id="deliveries"', 'id="errors"', 'id="throughput"'):
        assert section in page
    assert "delivered" in page and "interrupted" in page and "stopped before recording an outcome" in page
    assert "24 instances" in page  # received in the last hour
    assert "0 (retention)" in page  # the study's files are gone, its history stays
    assert PATIENT_NAME not in page and PATIENT_ID not in page and "Leakprobe" not in page
    assert "http://" not in page.replace(f"http://127.0.0.1:{node.http_port}", "")  # no external assets
    assert "<script" not in page

    chromium = require_tool("chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status.png"
    shot.unlink(missing_ok=True)
    profile = node.root / "chromium-profile"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            f"--screenshot={shot}", "--window-size=1400,1000", "--hide-scrollbars",
            f"http://127.0.0.1:{node.http_port}/status"]
    proc = loop["node"].net.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HOME": str(profile)})
    out, _ = proc.communicate(timeout=90)
    assert shot.exists() and shot.stat().st_size > 20_000, out.decode(errors="replace")[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (1400, 1000)
    print(f"\nstatus page screenshot: {shot}")
