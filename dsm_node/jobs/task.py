"""The task that runs one job: claim -> assemble -> infer -> encode -> outbox.

The same code runs in the node's local executor and in Celery workers. It is idempotent: it
claims the job in the database first and does nothing when the job is already finished or
running elsewhere with a live heartbeat, so duplicate deliveries of a task are harmless. Result
UIDs are deterministic, so a job re-run after a crash rewrites the same SEG/SR instances.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from ..audit import SERIOUS_FAILURE
from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Instance, Job, Series, utcnow
from ..lifecycle import JobState
from ..liveness import HOLDER, holder_gone
from ..metrics import JOB_STAGE_SECONDS
from .machine import transition

log = logging.getLogger("dsm_node.jobs")

#: This process as a job holder (``host:pid:token``, see dsm_node.liveness).
WORKER_ID = HOLDER

#: What the task returns when it put the job back to ``queued`` after an unexpected error with
#: attempts left: whoever ran it submits it again (both executors do), or it would wait in
#: ``queued`` until the next start.
REQUEUED = "requeued"


class JobInputError(Exception):
    """The input cannot be processed (bad geometry, missing files): the job fails, no retry."""


class Pipeline(Protocol):
    """What a job needs from the inference + encoding side (see dsm_node.jobs.pipeline)."""

    model_version: str

    def process(self, ctx: NodeContext, job: Job, paths: list[Path], timings: dict[str, float]) -> dict[str, Any]:
        """Assemble, infer, encode and record results; return a summary for the job row."""


class JobRunner:
    """Callable with a job id; holds the pipeline (and so the loaded model) for the worker's life."""

    def __init__(self, ctx: NodeContext, pipeline_factory: Callable[[], Pipeline]) -> None:
        self._ctx = ctx
        self._factory = pipeline_factory
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()

    @property
    def pipeline(self) -> Pipeline:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = self._factory()
            return self._pipeline

    def __call__(self, job_id: int) -> str:
        ctx = self._ctx
        if not self._claim(job_id):
            return "skipped"
        timings: dict[str, float] = {}
        try:
            with transaction(ctx.sessions) as s:
                job = s.get_one(Job, job_id)
                paths = self._input_paths(s, job)
            with self._heartbeat(job_id):
                with transaction(ctx.sessions) as s:
                    job = s.get_one(Job, job_id)
                    job.model_version = self.pipeline.model_version
                started = time.perf_counter()
                summary = self.pipeline.process(ctx, _detached(ctx, job_id), paths, timings)
                timings["total"] = time.perf_counter() - started
            with transaction(ctx.sessions) as s:
                job = s.get_one(Job, job_id, with_for_update=True)
                job.timings = timings
                job.summary = summary
                transition(s, ctx.auditor, job, JobState.ENCODED, timings=timings)
            for stage, seconds in timings.items():
                JOB_STAGE_SECONDS.labels(stage).observe(seconds)
            return "encoded"
        except JobInputError as exc:
            self._fail(job_id, str(exc), timings)
            return "failed"
        except Exception as exc:  # unexpected: retried up to executor.max_attempts
            log.exception("job %s failed", job_id)
            return _retry_or_fail(ctx, job_id, f"{type(exc).__name__}: {exc}")

    # -- steps ---------------------------------------------------------------------------------
    def _claim(self, job_id: int) -> bool:
        ctx = self._ctx
        stale = utcnow() - dt.timedelta(seconds=ctx.settings.executor.stale_after_s)
        with transaction(ctx.sessions) as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                log.warning("job %s does not exist (database reset?)", job_id)
                return False
            ended = job.state == JobState.RUNNING and holder_gone(ctx.settings.storage.data_dir, job.worker)
            if job.state == JobState.RUNNING and (job.heartbeat_at or job.updated_at) >= stale and not ended:
                return False  # another worker is on it
            if job.state not in (JobState.QUEUED, JobState.SELECTED, JobState.RUNNING):
                return False  # finished already: a duplicate task delivery
            if job.state == JobState.RUNNING:
                ctx.auditor.record(
                    "job_interrupted", outcome=SERIOUS_FAILURE, session=s, study_uid=job.study.study_uid,
                    series_uid=job.series_uid, job_id=job.id, worker=job.worker,
                    cause="process_ended" if ended else "heartbeat_stale",
                )
                said = "ended" if ended else "stopped responding"
                transition(s, ctx.auditor, job, JobState.QUEUED, reason=f"worker {job.worker} {said}")
            if job.state == JobState.SELECTED:
                transition(s, ctx.auditor, job, JobState.QUEUED)
            job.attempts += 1
            job.worker = WORKER_ID
            job.heartbeat_at = utcnow()
            transition(s, ctx.auditor, job, JobState.RUNNING, worker=WORKER_ID, attempt=job.attempts)
        return True

    def _input_paths(self, session: Any, job: Job) -> list[Path]:
        rows = session.scalars(
            select(Instance.path)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.series_uid == job.series_uid, Instance.ignored.is_(False), Instance.deleted_at.is_(None))
        ).all()
        if not rows:
            raise JobInputError(f"series {job.series_uid} has no stored instances")
        spool = self._ctx.spool_dir
        return [spool / p for p in rows]

    def _fail(self, job_id: int, reason: str, timings: dict[str, float]) -> None:
        with transaction(self._ctx.sessions) as s:
            job = s.get_one(Job, job_id, with_for_update=True)
            job.timings = timings
            if job.state == JobState.RUNNING:
                transition(s, self._ctx.auditor, job, JobState.FAILED, reason=reason)

    @contextmanager
    def _heartbeat(self, job_id: int) -> Iterator[None]:
        stop = threading.Event()
        interval = self._ctx.settings.executor.heartbeat_interval_s

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with transaction(self._ctx.sessions) as s:
                        s.get_one(Job, job_id).heartbeat_at = utcnow()
                except Exception:
                    log.warning("heartbeat of job %s failed", job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"dsm-heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


def interrupted(ctx: NodeContext, job_id: int, reason: str) -> str:
    """The process running ``job_id`` died (crash, out-of-memory kill): audit it, then retry or
    fail the job like any unexpected error. Returns ``requeued``, ``failed`` or ``lost``."""
    return _retry_or_fail(ctx, job_id, reason, interrupted=True)


def _retry_or_fail(ctx: NodeContext, job_id: int, reason: str, *, interrupted: bool = False) -> str:
    with transaction(ctx.sessions) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.state != JobState.RUNNING:
            return "lost"
        if interrupted:
            ctx.auditor.record(
                "job_interrupted", outcome=SERIOUS_FAILURE, session=s, study_uid=job.study.study_uid,
                series_uid=job.series_uid, job_id=job.id, worker=job.worker, reason=reason[:1000],
            )
        if job.attempts >= ctx.settings.executor.max_attempts:
            transition(s, ctx.auditor, job, JobState.FAILED, reason=reason[:1000])
            return "failed"
        transition(s, ctx.auditor, job, JobState.QUEUED, reason=f"retry after {reason}"[:1000])
    return REQUEUED


def _detached(ctx: NodeContext, job_id: int) -> Job:
    """A read-only snapshot of the job (with its study) for the pipeline."""
    with ctx.sessions() as s:
        job = s.get_one(Job, job_id)
        _ = job.study.study_uid, job.study.calling_ae, job.study.peer_address
        s.expunge_all()
        return job
