"""Completeness and selection against a real database: quiet period, revisions, jobs, audit."""
import datetime as dt
import time

from sqlalchemy import select

from dsm_node.audit import query_events
from dsm_node.db.models import Job, JobState, Study, StudyState, utcnow
from dsm_node.studies.completeness import sweep
from dsm_node.studies.decide import decide
from dsm_node.studies.service import StudyService
from tests.studies.studyrows import add_instances, ct_header

T0 = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.timezone.utc)
STUDY = "1.2.826.0.1.3680043.8.498.100"
VENOUS = STUDY + ".3"


def study(ctx):
    with ctx.sessions() as s:
        return s.scalar(select(Study).where(Study.study_uid == STUDY))


def jobs(ctx):
    with ctx.sessions() as s:
        return list(s.scalars(select(Job).order_by(Job.revision)))


def events(ctx, event_type):
    with ctx.sessions() as s:
        return query_events(s, event_type=event_type, study_uid=STUDY)


def test_study_completes_exactly_after_the_quiet_period(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 30})
    add_instances(ctx, STUDY, VENOUS, 40, at=T0)
    add_instances(ctx, STUDY, VENOUS, 10, at=T0 + dt.timedelta(seconds=20))
    assert sweep(ctx, T0 + dt.timedelta(seconds=49)) == []
    assert study(ctx).state == StudyState.RECEIVING
    done = sweep(ctx, T0 + dt.timedelta(seconds=50))
    assert [(d.study_uid, d.revision, d.instance_count, d.series_count) for d in done] == [(STUDY, 1, 50, 1)]
    assert study(ctx).state == StudyState.COMPLETE
    assert sweep(ctx, T0 + dt.timedelta(seconds=90)) == []  # once only
    [event] = events(ctx, "study_complete")
    assert event.detail["revision"] == 1 and event.detail["instance_count"] == 50 and event.detail["quiet_s"] == 30
    assert event.actor_ae == "PACS"


def test_selection_records_decisions_and_one_job(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 30})
    add_instances(ctx, STUDY, STUDY + ".1", 2, at=T0, header=ct_header("SCOUT", 1, ("ORIGINAL", "PRIMARY", "LOCALIZER")))
    add_instances(ctx, STUDY, STUDY + ".2", 30, at=T0, header=ct_header("ABD NON-CONTRAST", 1))
    add_instances(ctx, STUDY, VENOUS, 30, at=T0, header=ct_header("ABD PV", 2, ContrastBolusAgent="IOHEXOL"))
    sweep(ctx, T0 + dt.timedelta(minutes=1))
    [decision] = decide(ctx)
    assert decision.outcome.chosen.series_uid == VENOUS and decision.job_id is not None
    assert decide(ctx) == []  # idempotent: the study is no longer complete

    s = study(ctx)
    assert s.state == StudyState.SELECTED and s.selected_series_uid == VENOUS
    assert s.selection_reason.startswith("axial, preferred phase, 2 mm slices, 30 slices")
    [job] = jobs(ctx)
    assert (job.id, job.revision, job.series_uid, job.state) == (decision.job_id, 1, VENOUS, JobState.SELECTED)
    [selected] = events(ctx, "series_selected")
    assert selected.series_uid == VENOUS and selected.detail["job_id"] == job.id
    rejected = {e.series_uid: e.detail["reason"] for e in events(ctx, "series_not_selected")}
    assert "LOCALIZER" in rejected[STUDY + ".1"]
    assert rejected[STUDY + ".2"] == f"eligible but ranked below {VENOUS}: no contrast rather than preferred phase"


def test_no_eligible_series_closes_the_study(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 30})
    add_instances(ctx, STUDY, STUDY + ".1", 3, at=T0, header=ct_header("SCOUT", 1, ("ORIGINAL", "PRIMARY", "LOCALIZER")))
    add_instances(ctx, STUDY, STUDY + ".2", 5, at=T0, header={"Modality": "SR"})
    StudyService(ctx).run_once(T0 + dt.timedelta(minutes=1))
    s = study(ctx)
    assert (s.state, s.state_reason, s.selected_series_uid) == (StudyState.NO_ELIGIBLE, "no eligible CT series", None)
    assert jobs(ctx) == []
    [closed] = events(ctx, "study_no_eligible_series")
    assert closed.outcome == 4 and closed.detail["reason"] == "no eligible CT series"
    assert closed.detail["series"][STUDY + ".2"].startswith("modality SR is not CT")
    assert len(events(ctx, "series_not_selected")) == 2


def test_late_instance_makes_a_new_revision_and_a_new_job(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 30})
    service = StudyService(ctx)
    add_instances(ctx, STUDY, VENOUS, 30, at=T0)
    service.run_once(T0 + dt.timedelta(seconds=30))
    assert study(ctx).state == StudyState.SELECTED

    late = T0 + dt.timedelta(minutes=10)
    add_instances(ctx, STUDY, VENOUS, 1, at=late)
    assert (study(ctx).state, study(ctx).revision) == (StudyState.RECEIVING, 2)
    assert service.run_once(late + dt.timedelta(seconds=29)) == ([], [])
    completed, decisions = service.run_once(late + dt.timedelta(seconds=30))
    assert [(c.revision, c.instance_count) for c in completed] == [(2, 31)]
    assert [d.revision for d in decisions] == [2]
    assert [(j.revision, j.series_uid) for j in jobs(ctx)] == [(1, VENOUS), (2, VENOUS)]
    assert [e.detail["revision"] for e in events(ctx, "series_selected")] == [1, 2]
    assert events(ctx, "study_complete")[-1].detail["instances_this_revision"] == 1


def test_instance_between_completion_and_selection_defers_the_decision(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 30})
    add_instances(ctx, STUDY, VENOUS, 30, at=T0)
    sweep(ctx, T0 + dt.timedelta(seconds=30))
    add_instances(ctx, STUDY, VENOUS, 1, at=T0 + dt.timedelta(seconds=31))
    assert decide(ctx) == []  # revision 1 is gone; nothing is decided on a stale view
    StudyService(ctx).run_once(T0 + dt.timedelta(seconds=61))
    assert [(j.revision, j.series_uid) for j in jobs(ctx)] == [(2, VENOUS)]


def test_background_service_uses_wall_clock_quiet_period(make_ctx):
    ctx = make_ctx(**{"completeness.quiet_period_s": 1, "completeness.poll_interval_s": 0.1})
    add_instances(ctx, STUDY, VENOUS, 25, at=utcnow())
    service = StudyService(ctx)
    service.start()
    try:
        time.sleep(0.5)
        assert study(ctx).state == StudyState.RECEIVING
        deadline = time.monotonic() + 10
        while study(ctx).state != StudyState.SELECTED and time.monotonic() < deadline:
            time.sleep(0.1)
        assert study(ctx).state == StudyState.SELECTED
        [event] = events(ctx, "study_complete")
        assert 1 <= event.detail["quiet_s"] < 5
    finally:
        service.stop()
    assert not service.running
