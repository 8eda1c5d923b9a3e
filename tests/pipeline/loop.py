"""Helpers for whole-loop tests: node configuration and waiting on job states."""
from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from dsm_node.db.models import AuditEvent, Job, Study
from dsm_node.settings import Settings
from tests.nodeproc import NodeProcess


def node_yaml(checkpoint: Path, pacs_port: int | None, *, executor: str = "local", broker: str | None = None,
              stale_after_s: float = 4) -> str:
    lines = [
        "inference:",
        f"  checkpoint: {checkpoint}",
        "  device: cpu",
        "executor:",
        f"  kind: {executor}",
        "  heartbeat_interval_s: 0.5",
        f"  stale_after_s: {stale_after_s}",
        "  visibility_timeout_s: 30",
    ]
    if broker:
        lines.append(f"  broker_url: {broker}")
    if pacs_port:
        lines += [
            "delivery:",
            f"  destinations: [{{name: pacs, ae_title: PACS, host: 127.0.0.1, port: {pacs_port}}}]",
            "  backoff_initial_s: 0.5",
            "  backoff_max_s: 2",
        ]
    return "\n".join(lines) + "\n"


def jobs(node: NodeProcess) -> list[Job]:
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            return list(s.scalars(select(Job).order_by(Job.id)))
    finally:
        ctx.close()


def wait_job(node: NodeProcess, states: set[str], timeout: float = 240, predicate=None) -> Job:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        found = jobs(node)
        if found:
            last = found[-1]
            if last.state in states and (predicate is None or predicate(last)):
                return last
            if last.state == "failed" and "failed" not in states:
                raise AssertionError(f"job failed: {last.reason}")
        time.sleep(0.3)
    ctx = node.context()
    with ctx.sessions() as s:
        studies = [(st.state, st.state_reason, st.selection_reason) for st in s.scalars(select(Study))]
    ctx.close()
    seen = f"{last.state} ({last.reason})" if last else "no job"
    raise AssertionError(f"job did not reach {states}: {seen}; studies: {studies}")


def job_transitions(node: NodeProcess, job_id: int) -> list[tuple[str, str]]:
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            events = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "job_transition").order_by(AuditEvent.id))
            return [(e.detail["from_state"], e.detail["to_state"]) for e in events if e.detail.get("job_id") == job_id]
    finally:
        ctx.close()


def audit_events(node: NodeProcess, event_type: str) -> list[AuditEvent]:
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type).order_by(AuditEvent.id)))
    finally:
        ctx.close()


def assert_results_received(received: dict, job: Job) -> None:
    """The destination got SEG + SR + key images (an overview and one image per lesion, at most
    ``results.key_images_max_lesions``), or the "no findings" SR alone."""
    from pydicom.uid import SecondaryCaptureImageStorage

    key_images = [d for d in received.values() if d.SOPClassUID == SecondaryCaptureImageStorage]
    max_lesions = Settings().results.key_images_max_lesions
    expected_images = (1 + min(len(job.summary["lesions"]), max_lesions)) if job.summary["segments"] else 0
    assert len(key_images) == job.summary["key_images"] == expected_images
    assert len(received) == (2 + len(key_images) if job.summary["segments"] else 1)
