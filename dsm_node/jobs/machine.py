"""Job state writes (the states and the table of allowed moves: dsm_node.lifecycle).

The study of the job's revision follows: ``failed`` (with the job's reason) when the job
failed, ``done`` when it was delivered or kept.

Transitions are idempotent (moving to the current state is a no-op) and every real one is
audited. Because the state lives in the database, any process can resume any job after a crash.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import MINOR_FAILURE, SERIOUS_FAILURE, SUCCESS, Auditor
from ..db.models import Job, utcnow
from ..lifecycle import JOB_TERMINAL, JobState, StudyState, check_job, check_study

S = JobState


def transition(
    session: Session,
    auditor: Auditor,
    job: Job,
    to: str,
    *,
    reason: str | None = None,
    **detail: Any,
) -> bool:
    """Move ``job`` to ``to``; return False when it already was there. Raises on a forbidden move."""
    if job.state == to:
        return False
    target = check_job(job.state, to, f"job {job.id}")
    study = job.study
    study_to = None
    if target in JOB_TERMINAL and study.revision == job.revision:
        study_to = StudyState.FAILED if target == S.FAILED else StudyState.DONE
        if study.state != study_to:
            study_to = check_study(study.state, study_to, f"study of job {job.id}")
    previous = job.state
    job.state = target.value
    job.reason = reason
    job.updated_at = utcnow()
    if study_to is not None:
        study.state = study_to.value
        study.state_reason = reason if target in (S.FAILED, S.KEPT) else None
    outcome = SERIOUS_FAILURE if target == S.FAILED else (
        MINOR_FAILURE if previous == S.RUNNING and target == S.QUEUED else SUCCESS)
    auditor.record(
        "job_transition",
        outcome=outcome,
        session=session,
        study_uid=study.study_uid,
        series_uid=job.series_uid,
        job_id=job.id,
        revision=job.revision,
        from_state=previous,
        to_state=target.value,
        **({"reason": reason} if reason else {}),
        **detail,
    )
    return True


DEAD_LETTER_REASON = "delivery dead-lettered: "

#: Coarse causes of a failed job, for the ``dsm_jobs_failed`` gauge (the full reason is on the
#: job and its study): the prefix of the reason each failing path writes.
FAILURE_CAUSES = (
    ("volume assembly:", "input"),
    ("series ", "input"),
    (DEAD_LETTER_REASON, "delivery"),
    ("interrupted ", "interrupted"),
)


def failure_cause(reason: str | None) -> str:
    """``input``, ``delivery``, ``interrupted`` or ``error`` (anything else) for a job's reason."""
    for prefix, cause in FAILURE_CAUSES:
        if (reason or "").startswith(prefix):
            return cause
    return "error"


def lock_job(session: Session, job_id: int) -> Job | None:
    """The job row, locked for update where the database supports it (PostgreSQL)."""
    return session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()


def interrupted_running(session: Session, older_than: dt.timedelta, data_dir: Any) -> dict[int, str]:
    """Running jobs whose worker is gone -> why: its process ended (known at once, see
    dsm_node.liveness), or it sent no heartbeat for ``older_than`` (any other worker)."""
    from ..liveness import holder_gone

    limit = utcnow() - older_than
    found: dict[int, str] = {}
    for job in session.scalars(select(Job).where(Job.state == S.RUNNING)).all():
        if holder_gone(data_dir, job.worker):
            found[job.id] = "process_ended"
        elif (job.heartbeat_at or job.updated_at) < limit:
            found[job.id] = "heartbeat_stale"
    return found
