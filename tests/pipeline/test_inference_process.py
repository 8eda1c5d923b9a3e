"""The local executor runs inference in a child process (issue 18): a crash or an out-of-memory
kill there, or a volume too large to decode, fails or retries the job with the reason while the
node's receiver (same process as the executor) keeps serving."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dsm_node.context import build_context
from dsm_node.db.models import AuditEvent, Job
from dsm_node.jobs.dispatch import JobDispatcher
from dsm_node.jobs.executors import LocalExecutor
from dsm_node.receive.scp import StorageSCP
from dsm_node.settings import load_settings
from dsm_node.studies.service import StudyService
from tests.support.ct import write_ct_series
from tests.tools import free_port


@pytest.fixture
def node(tmp_path):
    """Receiver + completeness/selection + dispatcher in this process; the executor per test."""
    settings = load_settings(None, {
        "storage.data_dir": str(tmp_path / "data"), "dicom.port": free_port(), "storage.min_free_bytes": 0,
        "completeness.quiet_period_s": 0.5, "completeness.poll_interval_s": 0.2, "selection.min_slices": 3,
        "executor.max_attempts": 2, "logging.file": False,
    })
    ctx = build_context(settings)
    scp, studies = StorageSCP(ctx), StudyService(ctx)
    scp.start()
    studies.start()
    started = []

    def run(pipeline: str) -> LocalExecutor:
        executor = LocalExecutor(ctx, pipeline=pipeline)
        dispatcher = JobDispatcher(ctx, executor, interval_s=0.2)
        dispatcher.start()
        started.append(dispatcher)
        return executor

    yield ctx, scp, run
    for dispatcher in started:
        dispatcher.stop()
    studies.stop()
    scp.stop()
    ctx.close()


def send(port: int, files: list[Path]) -> list[int]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DSMNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def echo(port: int) -> int | None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DSMNODE")
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def wait_job(ctx, states: set[str], timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ctx.sessions() as s:
            job = s.scalars(select(Job).order_by(Job.id.desc())).first()
        if job is not None and job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job not in {states}: {job.state if job else 'none'} ({job.reason if job else ''})")


def test_a_crash_of_the_inference_process_fails_the_job_with_the_reason_and_receiving_goes_on(node, tmp_path):
    ctx, scp, run = node
    executor = run("tests.pipeline.fake_pipelines:CrashingPipeline")
    series = write_ct_series(tmp_path / "s", 3, 32)
    assert send(scp.port, series.files) == [0, 0, 0]
    job = wait_job(ctx, {"failed"})
    assert job.attempts == 2  # retried once (executor.max_attempts=2), then failed
    assert job.reason == "the inference process died (killed by SIGKILL: out of memory?)"
    with ctx.sessions() as s:
        interrupted = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "job_interrupted")).all()
    assert len(interrupted) == 2 and all("killed by SIGKILL" in e.detail["reason"] for e in interrupted)
    # The receiver in this process never stopped; a new inference process is ready for work.
    assert echo(scp.port) == 0
    more = write_ct_series(tmp_path / "more", 3, 32)
    assert send(scp.port, more.files) == [0, 0, 0]
    deadline = time.monotonic() + 60
    while executor.child_pid is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert executor.child_pid is not None


def test_the_reaper_leaves_a_crash_of_the_watched_child_to_the_executor(node, tmp_path, monkeypatch):
    """The dispatcher's reaper sees a dead child's lock file free at once (dsm_node.liveness),
    while the executor notices the death within its poll. A slow executor (here: recording a crash
    takes a second, as on a loaded machine, where CI saw it) must still be the only one to record
    it: before, the reaper recorded a second job_interrupted and requeued the job beside the
    executor's own retry."""
    import dsm_node.jobs.task as task

    record = task.interrupted

    def slow(ctx, job_id, reason):  # noqa: ANN001, ANN202
        time.sleep(1.0)  # five reaper rounds (interval 0.2 s)
        return record(ctx, job_id, reason)

    monkeypatch.setattr(task, "interrupted", slow)
    ctx, scp, run = node
    run("tests.pipeline.fake_pipelines:CrashingPipeline")
    series = write_ct_series(tmp_path / "s", 3, 32)
    assert send(scp.port, series.files) == [0, 0, 0]
    job = wait_job(ctx, {"failed"})
    assert job.attempts == 2 and job.reason == "the inference process died (killed by SIGKILL: out of memory?)"
    time.sleep(1.0)  # a late reaper round would show here
    with ctx.sessions() as s:
        interrupted = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "job_interrupted")).all()
    assert [e.detail.get("reason", e.detail.get("cause")) for e in interrupted] == [job.reason] * 2


def test_an_oversized_frame_fails_its_job_without_stopping_the_receiver(node, tmp_path):
    ctx, scp, run = node
    run("tests.pipeline.fake_pipelines:bounded")
    series = write_ct_series(tmp_path / "s", 3, 32)
    for path in series.files:  # 65535 x 65535 declared: 17 GB per slice as float32
        ds = dcmread(path)
        ds.Rows = ds.Columns = 65535
        ds.save_as(path)
    assert send(scp.port, series.files) == [0, 0, 0]  # stored as received, decoded later
    job = wait_job(ctx, {"failed"})
    assert job.attempts == 1
    assert "3 slices of 65535 x 65535 pixels" in job.reason and "inference.max_voxels" in job.reason
    assert echo(scp.port) == 0


def test_a_series_the_machine_cannot_hold_fails_before_decoding_with_the_reason_audited(node, tmp_path):
    ctx, scp, run = node
    run("tests.pipeline.fake_pipelines:guarded")
    series = write_ct_series(tmp_path / "s", 3, 32)
    assert send(scp.port, series.files) == [0, 0, 0]
    job = wait_job(ctx, {"failed"})
    assert job.attempts == 1  # not retried: the same series would be refused again
    assert job.reason.startswith("memory: a series of 3 x 32 x 32 voxels needs about ")
    assert "MemAvailable" in job.reason
    with ctx.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "job_transition")).all()
    failed = [e.detail for e in events if e.detail.get("job_id") == job.id and e.detail.get("to_state") == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == job.reason
    with ctx.sessions() as s:  # red on /status: the study is failed with the same reason
        study = s.get(Job, job.id).study
        assert study.state == "failed" and study.state_reason == job.reason
    assert echo(scp.port) == 0
