"""Apply series selection to complete studies: record the decision, create the job.

One transaction per study holds the state change, the job row and every audit event of the
decision, so a crash leaves either all of them or none. The state change is conditional on
(state, revision), which makes the step idempotent and safe against a late instance (it bumps
the revision) or a second node process sharing the database.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from ..audit import MINOR_FAILURE
from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Job, Series, Study
from ..lifecycle import JOB_INITIAL, StudyState, study_sources
from .selection import NO_ELIGIBLE_REASON, SelectionOutcome, SeriesSummary, select_series


@dataclass(frozen=True)
class StudyDecision:
    study_uid: str
    revision: int
    outcome: SelectionOutcome
    job_id: int | None  # None when no series was eligible


def summary_of(series: Series) -> SeriesSummary:
    header: dict[str, Any] = dict(series.header or {})
    # The indexed columns back up a header that lacks them (e.g. an older index version).
    if series.modality and not header.get("Modality"):
        header["Modality"] = series.modality
    if series.series_description and not header.get("SeriesDescription"):
        header["SeriesDescription"] = series.series_description
    return SeriesSummary(series_uid=series.series_uid, instance_count=series.instance_count, header=header)


def decide(ctx: NodeContext) -> list[StudyDecision]:
    """Run selection for every complete study and record the outcome."""
    with ctx.sessions() as session:
        due = session.execute(
            select(Study.id, Study.revision).where(Study.state == StudyState.COMPLETE).order_by(Study.completed_at)
        ).all()
    decisions: list[StudyDecision] = []
    for study_id, revision in due:
        with transaction(ctx.sessions) as session:
            decision = _decide_one(ctx, session, study_id, revision)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _decide_one(ctx: NodeContext, session: Session, study_id: int, revision: int) -> StudyDecision | None:
    study = session.scalar(select(Study).where(Study.id == study_id).options(selectinload(Study.series)))
    if study is None:
        return None
    series = sorted(study.series, key=lambda s: (s.series_number is None, s.series_number or 0, s.id))
    outcome = select_series([summary_of(s) for s in series], ctx.settings.selection)
    chosen = outcome.chosen
    new_state = StudyState.SELECTED if chosen else StudyState.NO_ELIGIBLE
    claimed = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.state.in_(study_sources(new_state)), Study.revision == revision)
        .values(
            state=new_state.value,
            selected_series_uid=chosen.series_uid if chosen else None,
            selection_reason=outcome.reason,
            state_reason=None if chosen else NO_ELIGIBLE_REASON,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return None  # a late instance or another process got there first

    audit = ctx.auditor.record
    common = dict(study_uid=study.study_uid, actor_ae=study.calling_ae, actor_address=study.peer_address, session=session)
    job_id: int | None = None
    if chosen is not None:
        job = session.scalar(select(Job).where(Job.study_id == study_id, Job.revision == revision))
        if job is None:
            job = Job(study_id=study_id, revision=revision, series_uid=chosen.series_uid, state=JOB_INITIAL.value)
            session.add(job)
            session.flush()
        job_id = job.id
    for d in outcome.decisions:
        if d.selected:
            audit("series_selected", series_uid=d.series_uid, revision=revision, reason=d.reason, job_id=job_id, **common)
        else:
            audit(
                "series_not_selected", series_uid=d.series_uid, revision=revision, reason=d.reason,
                eligible=d.eligible, **common,
            )
    if chosen is None:
        # A minor failure: nothing wrong with the node, but the study will not be processed,
        # which an administrator filtering the audit trail for failures should see.
        audit(
            "study_no_eligible_series", outcome=MINOR_FAILURE, revision=revision, reason=NO_ELIGIBLE_REASON,
            series={d.series_uid: d.reason for d in outcome.decisions}, **common,
        )
    return StudyDecision(study.study_uid, revision, outcome, job_id)
