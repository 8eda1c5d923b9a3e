"""Webhooks on job delivered / failed (dead letter): JSON POST to a local HTTP receiver, retried
with back-off, audited, resumed from the database after a restart, no patient name or ID."""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from sqlalchemy import select, update

from dsm_node.audit import MAJOR_FAILURE, SERIOUS_FAILURE, SUCCESS
from dsm_node.db.engine import transaction
from dsm_node.db.models import AuditEvent, Job, JobState
from dsm_node.jobs.machine import transition
from dsm_node.notify import Notifier
from tests.support.ct import PATIENT_ID, PATIENT_NAME


class Receiver:
    """A local webhook receiver answering the scripted statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[str, dict, dict]] = []  # (path, headers, JSON body)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.path, dict(self.headers), json.loads(body)))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/dsm?source=node"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def _configure(node, url: str, **extra) -> None:
    config = yaml.safe_load(node.config_path.read_text())
    config["notifications"] = {"webhooks": [{"name": "ops", "url": url, "auth": {"type": "bearer", "token": "hook-tok"}}],
                               "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, **extra}
    node.config_path.write_text(yaml.safe_dump(config))
    from dsm_node.context import build_context
    from dsm_node.settings import load_settings

    node.ctx.close()
    node.ctx = build_context(load_settings(node.config_path))


def _finish_job(node, to: str, reason: str | None = None) -> int:
    with transaction(node.ctx.sessions) as s:
        job = s.scalars(select(Job).order_by(Job.id.desc())).first()
        transition(s, node.ctx.auditor, job, to, reason=reason)
        return job.id


def _attempts(node) -> list[AuditEvent]:
    return node.events("webhook_attempt")


def test_job_delivered_is_posted_with_uids_and_no_patient_data(make_node, result_files, receiver):
    node = make_node()
    _configure(node, receiver.url)
    receiver.statuses = [503]  # the receiver is briefly unavailable: retried
    files = [result_files[k] for k in ("SEG", "SR", "SC")]
    node.add_results(files)
    job_id = _finish_job(node, JobState.DELIVERED)
    notifier = Notifier(node.ctx, rng=random.Random(1))
    assert notifier.run_once() == 1
    assert notifier.run_once() == 0  # not due yet (back-off)
    time.sleep(0.06)
    assert notifier.run_once() == 1
    assert notifier.run_once() == 0  # sent: final
    assert Notifier(node.ctx).run_once() == 0  # a restarted node sends nothing again
    assert len(receiver.received) == 2
    path, headers, body = receiver.received[-1]
    assert path == "/hooks/dsm?source=node" and headers["Authorization"] == "Bearer hook-tok"
    assert headers["Content-Type"] == "application/json"
    assert body["event"] == "job.delivered" and body["job"]["id"] == job_id and body["job"]["state"] == "delivered"
    assert body["study_instance_uid"] == files[0].study_uid
    assert {r["sop_instance_uid"] for r in body["results"]} == {f.sop_instance_uid for f in files}
    assert body["id"] == receiver.received[0][2]["id"]  # the same notification, retried
    text = json.dumps(body)
    assert PATIENT_NAME not in text and PATIENT_ID not in text  # the result files' patient name and ID
    events = _attempts(node)
    assert [(e.outcome, e.detail["status"], e.detail["final"]) for e in events] == [
        (SERIOUS_FAILURE, "HTTP 503", False), (SUCCESS, "HTTP 200", True)]
    assert events[0].study_uid == files[0].study_uid
    assert "hook-tok" not in json.dumps([e.detail for e in events])


def test_failed_job_is_notified_and_given_up_after_max_attempts(make_node, result_files, receiver):
    node = make_node()
    _configure(node, receiver.url)
    receiver.statuses = [500] * 10
    node.add_results([result_files["SR"]])
    _finish_job(node, JobState.FAILED, reason="delivery dead-lettered: pacs")
    notifier = Notifier(node.ctx, rng=random.Random(2))
    deadline = time.monotonic() + 10
    while not any(e.detail["final"] for e in _attempts(node)):
        assert time.monotonic() < deadline
        notifier.run_once()
        time.sleep(0.02)
    events = _attempts(node)
    assert [e.detail["attempt"] for e in events] == [1, 2, 3]
    assert events[-1].outcome == MAJOR_FAILURE and events[-1].detail["final"]
    assert receiver.received[0][2]["event"] == "job.failed"
    assert receiver.received[0][2]["job"]["reason"] == "delivery dead-lettered: pacs"
    time.sleep(0.3)
    assert notifier.run_once() == 0  # given up: no more attempts


def test_unreachable_receiver_is_retried_and_restart_resumes(make_node, result_files):
    node = make_node()
    late = Receiver()
    url = late.url
    late.stop()  # nobody listens on that port yet
    late.server.server_close()
    _configure(node, url)
    node.add_results([result_files["SR"]])
    _finish_job(node, JobState.DELIVERED)
    assert Notifier(node.ctx).run_once() == 1
    (first,) = _attempts(node)
    assert first.detail["status"] in ("refused", "connect_failed") and not first.detail["final"]
    # a new node process (same database) after the receiver is up sends it
    port = int(url.split(":")[2].split("/")[0])

    class Handler(BaseHTTPRequestHandler):
        got: list = []

        def log_message(self, *a):
            pass

        def do_POST(self):
            Handler.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        time.sleep(0.06)
        assert Notifier(node.ctx).run_once() == 1
    finally:
        server.shutdown()
    assert [e.detail["status"] for e in _attempts(node)] == [first.detail["status"], "HTTP 204"]
    assert Handler.got[0]["event"] == "job.delivered"


def test_outcomes_older_than_the_lookback_are_not_sent(make_node, result_files, receiver):
    node = make_node()
    _configure(node, receiver.url, lookback_h=1)
    node.add_results([result_files["SR"]])
    _finish_job(node, JobState.DELIVERED)
    with transaction(node.ctx.sessions) as s:
        s.execute(update(AuditEvent).where(AuditEvent.event_type == "job_transition")
                  .values(time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)))
    assert Notifier(node.ctx).run_once() == 0 and receiver.received == []


def test_no_webhooks_no_thread(make_node):
    node = make_node()
    notifier = Notifier(node.ctx)
    notifier.start()
    assert notifier._thread is None and notifier.run_once() == 0
    notifier.stop()
