"""Study completeness: a study is complete after a quiet period without a new instance.

DICOM has no "study complete" message, so completeness is a time rule over the database:
``now - Study.last_received_at >= completeness.quiet_period_s``. Nothing is kept in memory, so
after a restart (even kill -9) a study that was receiving completes one quiet period after
its last instance, measured from the stored time, not from the restart.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update

from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Instance, Series, Study, utcnow
from ..lifecycle import StudyState, study_sources


@dataclass(frozen=True)
class CompletedStudy:
    study_uid: str
    revision: int
    instance_count: int
    series_count: int
    quiet_s: float  # how long the study had been quiet when it was marked complete


def sweep(ctx: NodeContext, now: dt.datetime | None = None) -> list[CompletedStudy]:
    """Mark every receiving study whose quiet period is over as complete; audit each one."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=ctx.settings.completeness.quiet_period_s)
    with ctx.sessions() as session:
        due = session.execute(
            select(Study.id, Study.revision)
            .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
            .order_by(Study.last_received_at)
        ).all()
    completed: list[CompletedStudy] = []
    for study_id, revision in due:
        done = _complete(ctx, study_id, revision, cutoff, now)
        if done is not None:
            completed.append(done)
    return completed


def _complete(
    ctx: NodeContext, study_id: int, revision: int, cutoff: dt.datetime, now: dt.datetime
) -> CompletedStudy | None:
    with transaction(ctx.sessions) as session:
        # Conditional on the state seen above: an instance stored meanwhile moved
        # last_received_at (or the revision), and then the study is simply not due yet.
        claimed = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.revision == revision,
                Study.state.in_(study_sources(StudyState.COMPLETE)),
                Study.last_received_at <= cutoff,
            )
            # A previous revision's decision no longer applies; selection makes a new one.
            .values(
                state=StudyState.COMPLETE.value, completed_at=now, state_reason=None,
                selected_series_uid=None, selection_reason=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None
        study = session.get(Study, study_id)
        assert study is not None
        instances, this_revision = session.execute(
            select(func.count(Instance.id), func.count(Instance.id).filter(Instance.study_revision == revision))
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == study_id, Instance.ignored.is_(False))
        ).one()
        series_count = session.scalar(select(func.count(Series.id)).where(Series.study_id == study_id)) or 0
        quiet_s = round((now - study.last_received_at).total_seconds(), 3)
        ctx.auditor.record(
            "study_complete",
            study_uid=study.study_uid,
            actor_ae=study.calling_ae,
            actor_address=study.peer_address,
            session=session,
            revision=revision,
            instance_count=instances,
            instances_this_revision=this_revision,
            series_count=series_count,
            quiet_s=quiet_s,
        )
        return CompletedStudy(study.study_uid, revision, instances, series_count, quiet_s)
