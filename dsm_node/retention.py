"""Retention: delete the spool and result files of studies whose results reached the PACS.

A study is *eligible* only when everything about it is finished and delivered:

- the study is ``done`` (not receiving, not waiting for selection or a job);
- it has at least one job and every job is ``delivered`` (a job ``kept`` because no destination
  is configured keeps its study: its results folder is then the only copy of the results);
- every result of those jobs has every delivery row ``delivered`` (a pending, in-progress or
  dead delivery keeps the whole study);
- something of it is still on disk (an instance or result without ``deleted_at``).

Eligible studies are deleted when their last delivery is older than
``retention.delivered_max_age_h``; and while the data disk is fuller than
``retention.disk_high_watermark``, eligible studies are deleted oldest delivery first whatever
their age. Nothing else is ever deleted: a study that is not delivered stays, however full the
disk (the receiver then refuses with 0xA700 at ``storage.min_free_bytes``).

Database rows stay (the audit trail and the status page need them): ``Instance.deleted_at`` and
``Result.deleted_at`` say the file is gone, and a ``retention_deleted`` audit event (DICOM Study
Deleted, 110105) carries the counts. Files are unlinked inside the transaction that marks them,
after re-checking eligibility under a lock on the study row, so a study that a new instance
re-opened meanwhile is left alone.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .audit import MINOR_FAILURE, SUCCESS
from .context import NodeContext
from .db.engine import transaction
from .db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    Study,
    StudyState,
    utcnow,
)
from .polling import PollingService

log = logging.getLogger("dsm_node.retention")


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


@dataclass
class RetentionReport:
    studies: list[str] = field(default_factory=list)
    instances_deleted: int = 0
    results_deleted: int = 0
    bytes_freed: int = 0
    errors: int = 0
    disk_used_fraction_before: float = 0.0
    disk_used_fraction_after: float = 0.0


class RetentionService(PollingService):
    """Runs :meth:`run_once` every ``retention.interval_s`` on a background thread."""

    name = "retention"

    def __init__(
        self,
        ctx: NodeContext,
        *,
        disk_usage: Callable[[Path], Any] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        super().__init__(thread_name="dsm-retention", interval_s=ctx.settings.retention.interval_s, logger=log,
                         failure_message="retention pass failed", stop_timeout_s=30)
        self._ctx = ctx
        self._disk_usage = disk_usage or shutil.disk_usage
        self._clock = clock
        self._lock = threading.Lock()  # one pass at a time (thread and explicit calls)

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self._ctx.settings.retention.enabled:
            return
        super().start()

    def poll_once(self) -> bool:
        self.run_once()
        return False

    # One pass ----------------------------------------------------------------------------
    def _used_fraction(self) -> float:
        usage = self._disk_usage(self._ctx.settings.storage.data_dir)
        return usage.used / usage.total if usage.total else 0.0

    def eligible(self, session: Session, study_id: int | None = None) -> list[tuple[int, str, dt.datetime]]:
        """(study id, study UID, last delivery time) of deletable studies, oldest first
        (only ``study_id`` when given)."""
        not_delivered_job = select(Job.id).where(Job.study_id == Study.id, Job.state != JobState.DELIVERED).exists()
        any_job = select(Job.id).where(Job.study_id == Study.id).exists()
        open_delivery = (
            select(Delivery.id)
            .join(Result, Delivery.result_id == Result.id)
            .join(Job, Result.job_id == Job.id)
            .where(Job.study_id == Study.id, Delivery.state != DeliveryState.DELIVERED)
            .exists()
        )
        on_disk = (
            select(Instance.id)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id == Study.id, Instance.deleted_at.is_(None))
            .exists()
        ) | (
            select(Result.id)
            .join(Job, Result.job_id == Job.id)
            .where(Job.study_id == Study.id, Result.deleted_at.is_(None))
            .exists()
        )
        last_delivery = (
            select(func.max(Delivery.delivered_at))
            .join(Result, Delivery.result_id == Result.id)
            .join(Job, Result.job_id == Job.id)
            .where(Job.study_id == Study.id)
            .scalar_subquery()
        )
        last_job = select(func.max(Job.updated_at)).where(Job.study_id == Study.id).scalar_subquery()
        stmt = select(Study.id, Study.study_uid, last_delivery, last_job).where(
            Study.state == StudyState.DONE, any_job, ~not_delivered_job, ~open_delivery, on_disk
        )
        if study_id is not None:
            stmt = stmt.where(Study.id == study_id)
        rows = session.execute(stmt).all()
        found = []
        for sid, uid, delivered, job_time in rows:
            when = _aware(delivered) or _aware(job_time)
            found.append((sid, uid, when))
        found.sort(key=lambda r: (r[2], r[0]))
        return found

    def run_once(self) -> RetentionReport:
        with self._lock:
            return self._run()

    def _run(self) -> RetentionReport:
        cfg = self._ctx.settings.retention
        report = RetentionReport()
        report.disk_used_fraction_before = used = self._used_fraction()
        now = self._clock()
        cutoff = now - dt.timedelta(hours=cfg.delivered_max_age_h)
        with self._ctx.sessions() as s:
            candidates = self.eligible(s)
        for study_id, study_uid, when in candidates:
            if when <= cutoff:
                reason = "age"
            elif used > cfg.disk_high_watermark:
                reason = "disk_high_watermark"
            else:
                continue
            self._delete_study(study_id, study_uid, reason, report)
            if reason == "disk_high_watermark":
                used = self._used_fraction()
        report.disk_used_fraction_after = self._used_fraction()
        if report.studies:
            log.info(
                "retention: %d studies, %d instances, %d results deleted (%d bytes)",
                len(report.studies), report.instances_deleted, report.results_deleted, report.bytes_freed,
            )
        return report

    def _delete_study(self, study_id: int, study_uid: str, reason: str, report: RetentionReport) -> None:
        ctx = self._ctx
        with transaction(ctx.sessions) as s:
            # Lock the study row (PostgreSQL; SQLite serialises writers) and re-check: a new
            # instance may have re-opened the study since the candidate list was read.
            locked = s.execute(select(Study.id).where(Study.id == study_id).with_for_update()).scalar()
            if locked is None or not self.eligible(s, study_id):
                return
            now = utcnow()
            inst = s.execute(
                select(Instance.id, Instance.path, Instance.size_bytes)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == study_id, Instance.deleted_at.is_(None))
            ).all()
            res = s.execute(
                select(Result.id, Result.path, Result.size_bytes)
                .join(Job, Result.job_id == Job.id)
                .where(Job.study_id == study_id, Result.deleted_at.is_(None))
            ).all()
            freed, errors = 0, 0
            for root, rows in ((ctx.spool_dir, inst), (ctx.results_dir, res)):
                for _id, rel, _size in rows:
                    freed_now, failed = _unlink(root, rel)
                    freed += freed_now
                    errors += failed
            if inst:
                s.execute(update(Instance).where(Instance.id.in_([r[0] for r in inst])).values(deleted_at=now))
            if res:
                s.execute(update(Result).where(Result.id.in_([r[0] for r in res])).values(deleted_at=now))
            ctx.auditor.record(
                "retention_deleted",
                outcome=MINOR_FAILURE if errors else SUCCESS,
                study_uid=study_uid,
                session=s,
                reason=reason,
                instances_deleted=len(inst),
                results_deleted=len(res),
                bytes_freed=freed,
                errors=errors,
            )
        _prune_empty_dirs(ctx.spool_dir / study_uid)
        report.studies.append(study_uid)
        report.instances_deleted += len(inst)
        report.results_deleted += len(res)
        report.bytes_freed += freed
        report.errors += errors


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def _unlink(root: Path, rel: str) -> tuple[int, int]:
    """Remove ``root/rel`` if it lies under root; (bytes freed, 1 on error)."""
    path = (root / rel).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        log.error("retention: %s is outside %s; not deleted", rel, root)
        return 0, 1
    try:
        size = path.stat().st_size
        path.unlink()
        return size, 0
    except FileNotFoundError:
        return 0, 0  # already gone (an earlier pass crashed before committing)
    except OSError:
        log.exception("retention: cannot delete %s", path)
        return 0, 1


def _prune_empty_dirs(study_dir: Path) -> None:
    if not study_dir.is_dir():
        return
    for sub in sorted(study_dir.glob("*"), reverse=True):
        if sub.is_dir():
            try:
                sub.rmdir()
            except OSError:
                pass
    try:
        study_dir.rmdir()
    except OSError:
        pass
