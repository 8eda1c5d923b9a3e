"""Retention (issue 7, resources): delivered data goes, everything else stays.

Builds the database state of many studies directly (the stages that produce it are tested in
their own suites) with real files in the spool and results folders, runs one retention pass,
and checks files, ``deleted_at`` marks and the ``retention_deleted`` audit events.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import (
    AuditEvent,
    Delivery,
    Instance,
    Job,
    Result,
    Series,
    Study,
    utcnow,
)
from dsm_node.retention import DiskUsage, RetentionService
from dsm_node.settings import load_settings

NOW = utcnow()


def hours_ago(h: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=h)


@pytest.fixture(params=["sqlite", "postgresql"])
def ctx(request, tmp_path):
    """The eligibility query and the row lock run on both supported databases."""
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    settings = load_settings(None, {"storage.data_dir": tmp_path / "data", "retention.delivered_max_age_h": 72,
                                    "database.url": url})
    c = build_context(settings)
    yield c
    c.close()


def make_study(ctx, name: str, *, study_state="done", job_state="delivered", delivery_states=("delivered",),
               delivered_h: float | None = 100, instances: int = 3, results: int = 2) -> dict:
    """A study with ``instances`` spool files, one job with ``results`` result files, each result
    with one delivery per entry of ``delivery_states``."""
    uid = f"1.2.826.0.1.3680043.8.498.77.{int.from_bytes(name.encode(), 'big')}"
    files: list[Path] = []
    with transaction(ctx.sessions) as s:
        study = Study(study_uid=uid, state=study_state, instance_count=instances, calling_ae="PACS")
        series = Series(study=study, series_uid=uid + ".1", modality="CT", instance_count=instances)
        s.add_all([study, series])
        for i in range(instances):
            rel = f"{uid}/{uid}.1/{uid}.1.{i}.dcm"
            path = ctx.spool_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 1000)
            files.append(path)
            s.add(Instance(series=series, sop_instance_uid=f"{uid}.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           transfer_syntax_uid="1.2.840.10008.1.2", path=rel, size_bytes=1000))
        if job_state is not None:
            job = Job(study=study, revision=1, series_uid=uid + ".1", state=job_state,
                      updated_at=hours_ago(delivered_h or 0))
            s.add(job)
            for r in range(results):
                rel = f"{uid}/result-{r}.dcm"
                path = ctx.results_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"r" * 500)
                files.append(path)
                result = Result(job=job, kind="SEG" if r == 0 else "SR", sop_class_uid="1.2.3",
                                sop_instance_uid=f"{uid}.9.{r}", series_uid=f"{uid}.9", path=rel, size_bytes=500)
                s.add(result)
                for d, state in enumerate(delivery_states):
                    s.add(Delivery(result=result, destination=f"pacs{d}", ae_title="PACS", host="127.0.0.1",
                                   port=104, state=state, attempts=1,
                                   delivered_at=hours_ago(delivered_h) if state == "delivered" and delivered_h else None))
    return {"uid": uid, "files": files}


def on_disk(study: dict) -> int:
    return sum(p.exists() for p in study["files"])


def test_old_delivered_studies_are_deleted_and_nothing_else(ctx):
    cases = {
        "old_delivered": make_study(ctx, "a"),
        "old_two_destinations": make_study(ctx, "b", delivery_states=("delivered", "delivered")),
        "recent_delivered": make_study(ctx, "c", delivered_h=10),
        "old_one_pending": make_study(ctx, "d", delivery_states=("delivered", "pending")),
        "old_one_in_progress": make_study(ctx, "e", delivery_states=("delivered", "in_progress")),
        "old_dead_letter": make_study(ctx, "f", delivery_states=("dead",)),
        "old_job_failed": make_study(ctx, "g", job_state="failed", delivery_states=()),
        "old_job_encoded": make_study(ctx, "h", job_state="encoded", delivery_states=("pending",)),
        "old_job_running": make_study(ctx, "i", job_state="running", results=0),
        "study_receiving_again": make_study(ctx, "j", study_state="receiving"),
        "study_complete": make_study(ctx, "k", study_state="complete"),
        "no_eligible_series": make_study(ctx, "l", study_state="no_eligible", job_state=None),
        "no_job_yet": make_study(ctx, "m", study_state="selected", job_state=None),
    }
    service = RetentionService(ctx, disk_usage=lambda _p: DiskUsage(100, 10, 90))
    report = service.run_once()
    print(f"retention: {len(report.studies)} studies, {report.instances_deleted} instances, "
          f"{report.results_deleted} results, {report.bytes_freed} bytes freed")

    deleted = {"old_delivered", "old_two_destinations"}
    for name, study in cases.items():
        expected = 0 if name in deleted else len(study["files"])
        assert on_disk(study) == expected, f"{name}: {on_disk(study)} files left, expected {expected}"
    assert sorted(report.studies) == sorted(cases[n]["uid"] for n in deleted)
    assert report.instances_deleted == 6 and report.results_deleted == 4 and report.bytes_freed == 6 * 1000 + 4 * 500

    with ctx.sessions() as s:
        marked = {uid for (uid,) in s.execute(
            select(Study.study_uid).join(Series).join(Instance).where(Instance.deleted_at.is_not(None))).all()}
        assert marked == {cases[n]["uid"] for n in deleted}
        assert s.scalar(select(Instance).where(Instance.deleted_at.is_(None)).limit(1)) is not None
        results_marked = s.scalars(select(Result.sop_instance_uid).where(Result.deleted_at.is_not(None))).all()
        assert len(results_marked) == 4
        events = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "retention_deleted")).all()
        assert {e.study_uid for e in events} == {cases[n]["uid"] for n in deleted}
        for e in events:
            assert e.event_code == "110105" and e.event_action == "D" and e.outcome == 0
            assert e.detail["instances_deleted"] == 3 and e.detail["results_deleted"] == 2
            assert e.detail["reason"] == "age" and e.detail["bytes_freed"] == 4000
        # The rows stay (audit trail, status page); the spool folders of deleted studies are gone.
        assert s.scalar(select(Study).where(Study.study_uid == cases["old_delivered"]["uid"])) is not None
    assert not (ctx.spool_dir / cases["old_delivered"]["uid"]).exists()

    # A second pass finds nothing more to do (idempotent).
    again = service.run_once()
    assert again.studies == [] and again.instances_deleted == 0


def test_above_the_high_watermark_delivered_data_goes_oldest_first_and_undelivered_never(ctx):
    older = make_study(ctx, "w1", delivered_h=5)
    newer = make_study(ctx, "w2", delivered_h=1)
    pending = make_study(ctx, "w3", delivered_h=50, delivery_states=("pending",))
    receiving = make_study(ctx, "w4", study_state="receiving", delivered_h=60)
    usage = {"used": 95}

    def disk(_path):
        return DiskUsage(100, usage["used"], 100 - usage["used"])

    service = RetentionService(ctx, disk_usage=disk)
    # Each deleted study "frees" 10 points: after the oldest one, 85 % < 90 %: stop there.
    original = service._delete_study

    def delete_and_free(*args, **kwargs):
        original(*args, **kwargs)
        usage["used"] -= 10

    service._delete_study = delete_and_free  # type: ignore[method-assign]
    report = service.run_once()
    assert report.studies == [older["uid"]]
    assert on_disk(older) == 0 and on_disk(newer) == len(newer["files"])
    assert on_disk(pending) == len(pending["files"]) and on_disk(receiving) == len(receiving["files"])
    with ctx.sessions() as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.event_type == "retention_deleted"))
        assert event.detail["reason"] == "disk_high_watermark"

    # Disk still full, nothing delivered left: undelivered data is never touched.
    usage["used"] = 99
    service.run_once()
    assert on_disk(newer) == 0
    assert on_disk(pending) == len(pending["files"]) and on_disk(receiving) == len(receiving["files"])


def test_disabled_retention_does_not_start_and_serve_wires_it(ctx, tmp_path):
    from dsm_node.commands.serve import build_services

    labels = [label for label, _ in build_services(ctx)]
    assert "retention" in labels
    off = build_context(load_settings(None, {"storage.data_dir": tmp_path / "off", "retention.enabled": False}))
    try:
        service = RetentionService(off)
        service.start()
        assert service._thread is None
    finally:
        off.close()


def test_retention_thread_runs_passes_and_stops(tmp_path):
    settings = load_settings(None, {"storage.data_dir": tmp_path / "data", "retention.interval_s": 0.2,
                                    "retention.delivered_max_age_h": 1})
    c = build_context(settings)
    try:
        study = make_study(c, "t")
        service = RetentionService(c)
        service.start()
        import time

        deadline = time.monotonic() + 10
        while on_disk(study) and time.monotonic() < deadline:
            time.sleep(0.1)
        service.stop()
        assert on_disk(study) == 0
    finally:
        c.close()
