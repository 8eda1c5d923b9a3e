"""The spool check (``fsck``): the spool and the index must describe the same instances.

The invariant: every complete spool file has a live instance row with its path, and every live
instance row (``deleted_at`` empty) has its file. The receiver keeps it by its write order
(complete temp file -> row committed -> rename; a refusal deletes the temp file); this check
restores it after a crash and finds what anything else broke. It runs at every start, before
the SCP accepts associations (:func:`reconcile`), and as ``dsm-node fsck`` (:func:`fsck`, safe
while the node runs):

- temp files of interrupted writes are deleted (never acknowledged), except complete ones whose
  rename was lost to a crash or power failure: those are renamed into place
  (``Spool.recover_temp_files``);
- a complete spool file without a row is indexed when it is a consistent instance whose SOP
  Instance UID is unknown. That covers the window in which a power loss can drop the last
  SQLite commits (``synchronous=NORMAL``) while the fsynced, renamed file survives: the instance
  was acknowledged, so it must be in the index;
- a file that cannot be indexed -- unreadable, UIDs that do not match its path, a SOP Instance
  UID indexed at another path (a copy under another study or series), a series of another
  study -- is moved to ``DATA_DIR/quarantine`` (never silently lost, never served);
- a live row whose file is missing is marked (``deleted_at``), so no job reads it and a re-sent
  copy restores it. If no row at all has its file, nothing is marked: a spool folder that is
  not mounted must not wipe the index (:class:`SpoolUnavailable`);
- at start-up, folders left empty are removed.

Work is done one batch of series folders at a time (bounded memory, one query per batch). One
``spool_reconciled`` audit row records what was found and done.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select, update

from ..audit import MINOR_FAILURE, SUCCESS
from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Instance, Series, utcnow
from ..spool import FILE_SUFFIX, InvalidUID, Spool, uid_problem, validate_uid
from .dataset import header_summary, int_or_none
from .index import IndexConflict, IndexUnavailable, InstanceRecord, record_instance

log = logging.getLogger("dsm_node.receive.reconcile")

_BATCH_FILES = 2000
_SHOWN = 100  # paths listed in the audit row (the counts are complete)


class SpoolUnavailable(RuntimeError):
    """Not one indexed instance has its file: the spool is probably not mounted."""


@dataclass
class ReconcileReport:
    temp_files_removed: int = 0
    temp_files_completed: int = 0
    indexed: int = 0
    quarantined: list[str] = field(default_factory=list)
    already_indexed: int = 0
    orphan_files: list[str] = field(default_factory=list)  # files found without a row (indexed or quarantined)
    missing_files: list[str] = field(default_factory=list)  # rows whose file is gone (marked)
    empty_folders_removed: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # path -> why (quarantined / indexed / missing)
    repaired: bool = True

    @property
    def clean(self) -> bool:
        return not (self.temp_files_removed or self.temp_files_completed or self.orphan_files
                    or self.missing_files)

    def as_dict(self) -> dict[str, object]:
        return {
            "temp_files_removed": self.temp_files_removed,
            "temp_files_completed": self.temp_files_completed,
            "indexed": self.indexed,
            "quarantined": len(self.quarantined),
            "already_indexed": self.already_indexed,
            "orphan_files": len(self.orphan_files),
            "missing_files": len(self.missing_files),
            "empty_folders_removed": self.empty_folders_removed,
        }


def reconcile(ctx: NodeContext) -> ReconcileReport:
    """Start-up check and repair (see the module docstring). Idempotent."""
    return fsck(ctx, mode="startup")


def fsck(ctx: NodeContext, *, repair: bool = True, mode: str = "command", operator: str | None = None) -> ReconcileReport:
    """Compare spool and index, repair what can be repaired (``repair=False``: report only)."""
    storage = ctx.settings.storage
    spool = Spool(ctx.spool_dir, fsync=storage.fsync)
    report = ReconcileReport(repaired=repair)
    if repair:
        promoted, removed = spool.recover_temp_files()
        report.temp_files_removed = len(removed)
        report.temp_files_completed = len(promoted)
    checker = _Checker(ctx, spool, storage.data_dir / "quarantine", report, repair)
    seen_series: set[str] = set()
    for batch in _series_batches(spool):
        seen_series.update(series for series, _ in batch)
        checker.check_batch(batch)
    checker.check_unseen_series(seen_series)
    if repair and checker.pending_missing:
        checker.mark_missing()
    if repair and mode == "startup":
        report.empty_folders_removed = _prune_empty_folders(spool.root)
    detail = dict(report.as_dict(), mode=mode)
    if not repair:
        detail["dry_run"] = True
    if operator:
        detail["operator"] = operator
    if report.quarantined:
        detail["quarantined_paths"] = report.quarantined[:_SHOWN]
    if report.missing_files:
        detail["missing_paths"] = report.missing_files[:_SHOWN]
    outcome = MINOR_FAILURE if (report.quarantined or report.missing_files) else SUCCESS
    ctx.auditor.record("spool_reconciled", outcome=outcome, **detail)
    if report.quarantined or report.missing_files:
        log.error("spool check: %d file(s) quarantined, %d instance row(s) without their file",
                  len(report.quarantined), len(report.missing_files))
    return report


# Walking the spool ---------------------------------------------------------------------------
def _series_folders(root: Path) -> Iterator[tuple[str, str]]:
    """(series UID, "study/series") of every series folder with valid UID names."""
    try:
        studies = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for study in studies:
        if not study.is_dir(follow_symlinks=False) or uid_problem(study.name):
            continue
        for series in sorted(os.scandir(study.path), key=lambda e: e.name):
            if series.is_dir(follow_symlinks=False) and not uid_problem(series.name):
                yield series.name, f"{study.name}/{series.name}"


def _files_in(root: Path, folder: str) -> list[str]:
    out = []
    for entry in os.scandir(root / folder):
        name = entry.name
        if name.endswith(FILE_SUFFIX) and entry.is_file(follow_symlinks=False) and not uid_problem(name[: -len(FILE_SUFFIX)]):
            out.append(f"{folder}/{name}")
    return out


def _series_batches(spool: Spool) -> Iterator[list[tuple[str, list[str]]]]:
    """Batches of (series UID, its files in one folder), about ``_BATCH_FILES`` files each."""
    batch: list[tuple[str, list[str]]] = []
    count = 0
    for series, folder in _series_folders(spool.root):
        try:
            files = _files_in(spool.root, folder)
        except FileNotFoundError:  # removed meanwhile (retention)
            continue
        batch.append((series, files))
        count += len(files)
        if count >= _BATCH_FILES:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def _prune_empty_folders(root: Path) -> int:
    removed = 0
    for study in list(os.scandir(root)) if root.is_dir() else []:
        if not study.is_dir(follow_symlinks=False) or uid_problem(study.name):
            continue
        for series in list(os.scandir(study.path)):
            if series.is_dir(follow_symlinks=False) and not uid_problem(series.name):
                try:
                    os.rmdir(series.path)
                    removed += 1
                except OSError:
                    pass
        try:
            os.rmdir(study.path)
            removed += 1
        except OSError:
            pass
    return removed


# Checking ------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, ctx: NodeContext, spool: Spool, quarantine: Path, report: ReconcileReport, repair: bool) -> None:
        self.ctx = ctx
        self.spool = spool
        self.quarantine = quarantine
        self.report = report
        self.repair = repair
        self.live_rows = 0
        self.pending_missing: list[tuple[int, str]] = []  # (instance id, path)

    def check_batch(self, batch: list[tuple[str, list[str]]]) -> None:
        files = {rel for _, rels in batch for rel in rels}
        series_uids = sorted({series for series, _ in batch})
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(
                select(Instance.id, Instance.path)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.series_uid.in_(series_uids), Instance.deleted_at.is_(None))
            ).all()
        self.live_rows += len(rows)
        row_paths = {path for _, path in rows}
        self.report.already_indexed += len(files & row_paths)
        for instance_id, path in rows:
            if path not in files:
                self._row_without_file(instance_id, path)
        orphans = sorted(files - row_paths)
        if orphans:
            known = self._indexed_elsewhere(orphans)
            for rel in orphans:
                self._file_without_row(rel, known.get(_sop_of(rel)))

    def check_unseen_series(self, seen: set[str]) -> None:
        """Live rows of series that have no folder in the spool at all."""
        with self.ctx.engine.connect() as conn:
            live_series = conn.execute(
                select(Series.series_uid).join(Instance, Instance.series_id == Series.id)
                .where(Instance.deleted_at.is_(None)).group_by(Series.series_uid)
            ).scalars().all()
            missing = sorted(set(live_series) - seen)
            unseen: list[tuple[int, str]] = []
            for i in range(0, len(missing), 500):
                unseen += conn.execute(
                    select(Instance.id, Instance.path).join(Series, Instance.series_id == Series.id)
                    .where(Series.series_uid.in_(missing[i : i + 500]), Instance.deleted_at.is_(None))
                ).all()
        self.live_rows += len(unseen)
        for instance_id, path in unseen:
            self._row_without_file(instance_id, path)

    def _indexed_elsewhere(self, orphans: list[str]) -> dict[str, str]:
        """SOP Instance UID -> indexed path (live or deleted) for the orphans' UIDs."""
        sops = [_sop_of(rel) for rel in orphans]
        found: dict[str, str] = {}
        with self.ctx.engine.connect() as conn:
            for i in range(0, len(sops), 500):
                rows = conn.execute(
                    select(Instance.sop_instance_uid, Instance.path).where(Instance.sop_instance_uid.in_(sops[i : i + 500]))
                )
                found.update({sop: path for sop, path in rows})
        return found

    # Findings ------------------------------------------------------------------------------
    def _row_without_file(self, instance_id: int, path: str) -> None:
        if (self.spool.root / path).is_file():
            return  # written meanwhile (or in a folder of this series outside the batch)
        if self._write_in_flight(path):
            return  # the receiver committed the row and is renaming its temp file right now
        self.report.missing_files.append(path)
        self.report.problems[path] = "indexed instance whose spool file is missing"
        self.pending_missing.append((instance_id, path))

    def _write_in_flight(self, path: str) -> bool:
        folder = self.spool.root / path.rsplit("/", 1)[0]
        prefix = "." + path.rsplit("/", 1)[1] + "."
        try:
            return any(e.name.startswith(prefix) for e in os.scandir(folder))
        except FileNotFoundError:
            return False

    def _file_without_row(self, rel: str, indexed_at: str | None) -> None:
        self.report.orphan_files.append(rel)
        if indexed_at is not None and indexed_at != rel:
            self._quarantine(rel, f"SOP Instance UID already indexed at {indexed_at}")
            return
        if not self.repair:
            self.report.problems[rel] = "spool file without an index row"
            return
        path = self.spool.root / rel
        try:
            outcome = record_instance(self.ctx, _record_for(path, rel))
        except IndexUnavailable:
            raise  # the database is down: start-up fails rather than quarantine good files
        except IndexConflict as exc:
            self._quarantine(rel, str(exc))
            return
        except FileNotFoundError:
            return  # removed meanwhile
        except Exception as exc:  # unreadable or inconsistent file (pydicom raises many types)
            self._quarantine(rel, f"cannot be indexed: {type(exc).__name__}: {exc}"[:300])
            return
        if outcome.status != "duplicate":
            self.report.indexed += 1
            self.report.problems[rel] = "spool file without an index row: indexed"

    def _quarantine(self, rel: str, why: str) -> None:
        self.report.quarantined.append(rel)
        self.report.problems[rel] = why
        if not self.repair:
            return
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / rel.replace("/", "_")
        n = 1
        while target.exists():
            target = self.quarantine / f"{rel.replace('/', '_')}.{n}"
            n += 1
        try:
            os.replace(self.spool.root / rel, target)
        except FileNotFoundError:
            pass
        log.error("spool file quarantined", extra={"path": rel, "error": why})

    def mark_missing(self) -> None:
        if self.live_rows and len(self.pending_missing) >= self.live_rows:
            raise SpoolUnavailable(
                f"none of the {self.live_rows} indexed instances has its file under {self.spool.root}: "
                "is the spool folder mounted? Nothing was changed"
            )
        ids = [i for i, _ in self.pending_missing]
        now = utcnow()
        with transaction(self.ctx.sessions) as s:
            for i in range(0, len(ids), 500):
                s.execute(update(Instance).where(Instance.id.in_(ids[i : i + 500]), Instance.deleted_at.is_(None))
                          .values(deleted_at=now))


def _sop_of(rel: str) -> str:
    return rel.rsplit("/", 1)[-1][: -len(FILE_SUFFIX)]


def _record_for(path: Path, rel: str) -> InstanceRecord:
    ds = dcmread(path, stop_before_pixels=True)
    meta = ds.file_meta
    study, series, name = rel.split("/")
    sop = name[: -len(FILE_SUFFIX)]
    for value, what in ((ds.get("StudyInstanceUID"), "StudyInstanceUID"), (ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
                        (ds.get("SOPInstanceUID"), "SOPInstanceUID")):
        validate_uid(str(value) if value is not None else None, what)
    if (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) != (study, series, sop):
        raise InvalidUID(f"{rel}: UIDs in the file do not match its spool path")
    source_ae = meta.get("SourceApplicationEntityTitle")
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        path=rel,
        size_bytes=path.stat().st_size,
        calling_ae=str(source_ae).strip() if source_ae else None,
        modality=str(ds.get("Modality") or "") or None,
        series_number=int_or_none(ds.get("SeriesNumber")),
        series_description=str(ds.get("SeriesDescription") or "") or None,
        accession_number=str(ds.get("AccessionNumber") or "") or None,
        header=lambda: header_summary(ds),
    )
