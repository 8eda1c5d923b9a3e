"""The dispatcher: moves jobs along the parts of the state machine that need no worker.

- selected -> queued: hand the job to the executor;
- running whose worker is gone -> queued again, audited as interrupted: at once when its process
  ended on this host (a restarted node finds its own predecessor's jobs so; dsm_node.liveness),
  otherwise when its heartbeat is older than ``executor.stale_after_s``;
- encoded -> delivered once every outbox row of its results is delivered, -> failed when one
  is dead-lettered (and failed -> delivered when an operator's resend succeeds later);
  encoded -> kept when no destination is configured (the results stay in the results folder).

At start-up the jobs of ended workers are taken back first, then every queued job is submitted
again: the in-process queue died with the last process, and for Celery a duplicate message is
harmless because the task is idempotent.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from sqlalchemy import select

from ..audit import MINOR_FAILURE
from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import DeliveryState, Job
from ..lifecycle import JobState
from ..polling import PollingService
from .executors import Executor
from .machine import DEAD_LETTER_REASON, interrupted_running, transition

log = logging.getLogger("dsm_node.jobs")


class JobDispatcher(PollingService):
    def __init__(self, ctx: NodeContext, executor: Executor, interval_s: float | None = None) -> None:
        super().__init__(thread_name="dsm-dispatcher", interval_s=interval_s or ctx.settings.completeness.poll_interval_s,
                         logger=log, failure_message="dispatcher pass failed", stop_timeout_s=10)
        self._ctx = ctx
        self._executor = executor

    def start(self) -> None:
        if self._thread is not None:
            return
        self._executor.start()
        self.requeue_stale(submit=False)  # the previous incarnation's jobs, without waiting
        self.resubmit_queued()
        super().start()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self._executor.stop()

    def poll_once(self) -> bool:
        self.run_once()
        return False

    def run_once(self) -> None:
        self.requeue_stale()
        self.submit_selected()
        self.settle_delivered()

    def resubmit_queued(self) -> None:
        with self._ctx.sessions() as s:
            ids = list(s.scalars(select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.id)))
        for job_id in ids:
            self._executor.submit(job_id)

    def submit_selected(self) -> int:
        with self._ctx.sessions() as s:
            ids = list(s.scalars(select(Job.id).where(Job.state == JobState.SELECTED).order_by(Job.id)))
        for job_id in ids:
            with transaction(self._ctx.sessions) as s:
                job = s.get(Job, job_id, with_for_update=True)
                if job is None or job.state != JobState.SELECTED:
                    continue
                transition(s, self._ctx.auditor, job, JobState.QUEUED, executor=self._executor.name)
            # Submitted after the commit, so a fast worker always finds the job queued.
            task_id = self._executor.submit(job_id)
            with transaction(self._ctx.sessions) as s:
                s.get_one(Job, job_id).task_id = task_id
        return len(ids)

    def requeue_stale(self, submit: bool = True) -> int:
        stale_after = dt.timedelta(seconds=self._ctx.settings.executor.stale_after_s)
        data_dir = self._ctx.settings.storage.data_dir
        with self._ctx.sessions() as s:
            ids = list(interrupted_running(s, stale_after, data_dir))
        requeued = []
        for job_id in ids:
            with transaction(self._ctx.sessions) as s:
                job = s.get_one(Job, job_id, with_for_update=True)
                why = interrupted_running(s, stale_after, data_dir).get(job_id) if job is not None else None
                if why is None or (why == "process_ended" and self._executor.supervises(job.worker)):
                    continue  # (the local executor records its own child's end, with the exit reason)
                self._ctx.auditor.record(
                    "job_interrupted", outcome=MINOR_FAILURE, session=s, study_uid=job.study.study_uid,
                    series_uid=job.series_uid, job_id=job.id, worker=job.worker, attempts=job.attempts, cause=why,
                )
                if job.attempts >= self._ctx.settings.executor.max_attempts:
                    transition(s, self._ctx.auditor, job, JobState.FAILED, reason=f"interrupted {job.attempts} times")
                    continue
                said = "ended" if why == "process_ended" else "stopped responding"
                transition(s, self._ctx.auditor, job, JobState.QUEUED, reason=f"worker {job.worker} {said}")
                requeued.append(job_id)
        if submit:
            for job_id in requeued:
                self._executor.submit(job_id)
        if requeued:
            log.warning("took back %d job(s) whose worker is gone", len(requeued))
        return len(requeued)

    def settle_delivered(self) -> None:
        with self._ctx.sessions() as s:
            waiting = (Job.state == JobState.ENCODED) | (
                (Job.state == JobState.FAILED) & Job.reason.startswith(DEAD_LETTER_REASON)
            )
            ids = list(s.scalars(select(Job.id).where(waiting)))
        for job_id in ids:
            with transaction(self._ctx.sessions) as s:
                job = s.get_one(Job, job_id, with_for_update=True)
                rows = [d for r in job.results for d in r.deliveries]
                if not rows:
                    if job.state == JobState.ENCODED and not self._ctx.settings.delivery.destinations and job.results:
                        # Nowhere to send: the results stay on disk, the job is finished, and
                        # its state says so rather than claiming a delivery.
                        where = kept_results_dir(self._ctx, job)
                        transition(s, self._ctx.auditor, job, JobState.KEPT,
                                   reason=f"no destination configured: results kept in {where}", results_dir=str(where))
                    continue
                states = {d.state for d in rows}
                if states == {DeliveryState.DELIVERED}:
                    transition(s, self._ctx.auditor, job, JobState.DELIVERED)
                elif DeliveryState.DEAD in states and job.state == JobState.ENCODED:
                    dead = sorted({d.destination for d in rows if d.state == DeliveryState.DEAD})
                    transition(s, self._ctx.auditor, job, JobState.FAILED, reason=f"{DEAD_LETTER_REASON}{', '.join(dead)}")


def kept_results_dir(ctx: NodeContext, job: Job) -> Path:
    """Where the pipeline wrote the job's results (``results_dir/<study>/r<revision>``)."""
    return (ctx.results_dir / job.study.study_uid / f"r{job.revision}").resolve()
