"""The study and job life cycles (dsm_node.lifecycle): every allowed and every refused move, in
the table and through the writers that store states (job machine, completeness, selection,
receive index), on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import select

from dsm_node.db.engine import transaction
from dsm_node.db.models import AuditEvent, Job, Study
from dsm_node.jobs.machine import transition
from dsm_node.lifecycle import (
    JOB_MOVES,
    STUDY_MOVES,
    JobState,
    StudyState,
    TransitionError,
    check_job,
    check_study,
    study_sources,
)
from dsm_node.studies import completeness, decide
from tests.studies.studyrows import add_instances

St, J = StudyState, JobState

# The life cycles as the documentation draws them, written out independently of the module.
STUDY_ALLOWED = {
    ("receiving", "complete"),
    ("complete", "selected"), ("complete", "no_eligible"),
    ("selected", "done"), ("selected", "failed"),
    ("failed", "done"),
    *((s, "receiving") for s in ("complete", "selected", "no_eligible", "done", "failed")),
}
JOB_ALLOWED = {
    ("selected", "queued"), ("selected", "failed"),
    ("queued", "running"), ("queued", "failed"), ("queued", "selected"),
    ("running", "encoded"), ("running", "failed"), ("running", "queued"),
    ("encoded", "delivered"), ("encoded", "kept"), ("encoded", "failed"),
    ("failed", "delivered"),
}


def test_states_keep_the_stored_values():
    assert [s.value for s in St] == ["receiving", "complete", "selected", "no_eligible", "done", "failed"]
    assert [s.value for s in J] == ["selected", "queued", "running", "encoded", "delivered", "kept", "failed"]
    assert St.DONE == "done" and f"{J.KEPT}" == str(J.KEPT) == "kept"


@pytest.mark.parametrize("src,dst", list(itertools.product([s.value for s in St], repeat=2)))
def test_study_table(src, dst):
    assert ((src, dst) in STUDY_ALLOWED) == (St(dst) in STUDY_MOVES[St(src)])
    if (src, dst) in STUDY_ALLOWED:
        assert check_study(src, dst) is St(dst)
        assert src in study_sources(St(dst))
    else:
        with pytest.raises(TransitionError, match=f"{src} -> {dst} is not allowed"):
            check_study(src, dst)
        assert src not in study_sources(St(dst))


@pytest.mark.parametrize("src,dst", list(itertools.product([s.value for s in J], repeat=2)))
def test_job_table(src, dst):
    assert ((src, dst) in JOB_ALLOWED) == (J(dst) in JOB_MOVES[J(src)])
    if (src, dst) in JOB_ALLOWED:
        assert check_job(src, dst) is J(dst)
    else:
        with pytest.raises(TransitionError, match=f"{src} -> {dst} is not allowed"):
            check_job(src, dst)


def test_unknown_state_is_refused():
    with pytest.raises(TransitionError, match="'paused' is not a valid"):
        check_job("queued", "paused")
    with pytest.raises(TransitionError, match="'archived' is not a valid"):
        check_study("archived", "receiving")


_uids = itertools.count(1)


def _study_with_job(ctx, study_state: str, job_state: str) -> tuple[int, int]:
    n = next(_uids)
    with transaction(ctx.sessions) as s:
        study = Study(study_uid=f"2.25.{n}", state=study_state, calling_ae="PACS")
        s.add(study)
        s.flush()
        job = Job(study_id=study.id, revision=study.revision, series_uid=f"2.25.{n}.1", state=job_state)
        s.add(job)
        s.flush()
        return study.id, job.id


def _transitions(ctx, job_id: int) -> list[dict]:
    with ctx.sessions() as s:
        return [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.event_type == "job_transition"))
                if e.detail.get("job_id") == job_id]


def test_job_machine_walks_every_move(make_ctx):
    """Every (from, to) pair through jobs.machine.transition: allowed ones are stored and audited
    (the study following a terminal job), refused ones raise and change nothing."""
    ctx = make_ctx()
    for src, dst in itertools.product([s.value for s in J], repeat=2):
        # The study stands where a job in ``src`` leaves it.
        study_state = {"failed": "failed", "delivered": "done", "kept": "done"}.get(src, "selected")
        study_id, job_id = _study_with_job(ctx, study_state, src)
        if src == dst:
            with transaction(ctx.sessions) as s:
                assert transition(s, ctx.auditor, s.get(Job, job_id), dst) is False
            assert _transitions(ctx, job_id) == []
        elif (src, dst) in JOB_ALLOWED:
            with transaction(ctx.sessions) as s:
                assert transition(s, ctx.auditor, s.get(Job, job_id), dst, reason="walk") is True
            with ctx.sessions() as s:
                job, study = s.get(Job, job_id), s.get(Study, study_id)
                assert job.state == dst and type(job.state) is str
                expected_study = {"failed": "failed", "delivered": "done", "kept": "done"}.get(dst, study_state)
                assert study.state == expected_study
            (audit,) = _transitions(ctx, job_id)
            assert (audit["from_state"], audit["to_state"]) == (src, dst)
        else:
            with pytest.raises(TransitionError), transaction(ctx.sessions) as s:
                transition(s, ctx.auditor, s.get(Job, job_id), dst)
            with ctx.sessions() as s:
                assert s.get(Job, job_id).state == src and s.get(Study, study_id).state == study_state
            assert _transitions(ctx, job_id) == []


@pytest.mark.parametrize("job_to", ["delivered", "failed"])
def test_study_follows_its_job_only_where_allowed(make_ctx, job_to):
    """The study's done/failed written by the job machine obeys the study table: from every
    study state, the job's terminal move succeeds exactly where the study may follow."""
    ctx = make_ctx()
    study_to = "failed" if job_to == "failed" else "done"
    job_from = "encoded"
    for study_state in [s.value for s in St]:
        study_id, job_id = _study_with_job(ctx, study_state, job_from)
        ok = study_state == study_to or (study_state, study_to) in STUDY_ALLOWED
        if ok:
            with transaction(ctx.sessions) as s:
                transition(s, ctx.auditor, s.get(Job, job_id), job_to)
            with ctx.sessions() as s:
                assert s.get(Study, study_id).state == study_to
        else:
            with pytest.raises(TransitionError, match=f"study of job {job_id}: {study_state} -> {study_to}"):
                with transaction(ctx.sessions) as s:
                    transition(s, ctx.auditor, s.get(Job, job_id), job_to)
            with ctx.sessions() as s:
                assert s.get(Study, study_id).state == study_state
                assert s.get(Job, job_id).state == job_from


def test_completeness_and_selection_move_only_allowed_studies(make_ctx):
    """The bulk writers (completeness: -> complete, selection: -> selected/no_eligible) take a
    study only from the states the table allows, whatever state it is in."""
    ctx = make_ctx(**{"completeness.quiet_period_s": 1})
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    uids = {}
    for state in [s.value for s in St]:
        uid = f"2.25.9{next(_uids)}"
        add_instances(ctx, uid, uid + ".1", 3, old)
        with transaction(ctx.sessions) as s:
            s.scalar(select(Study).where(Study.study_uid == uid)).state = state
        uids[uid] = state
    completed = {c.study_uid for c in completeness.sweep(ctx)}
    assert completed == {u for u, st in uids.items() if st in study_sources(St.COMPLETE)}
    decided = {d.study_uid for d in decide.decide(ctx)}
    # The studies that were complete already, and the ones the sweep just completed.
    assert decided == {u for u, st in uids.items() if st in ("complete", "receiving")}
    with ctx.sessions() as s:
        after = {st.study_uid: st.state for st in s.scalars(select(Study).where(Study.study_uid.in_(uids)))}
    for uid, before in uids.items():
        if before in ("complete", "receiving"):
            assert after[uid] == "no_eligible"  # three slices are too few for selection
        else:
            assert after[uid] == before
