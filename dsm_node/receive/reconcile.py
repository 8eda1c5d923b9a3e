"""Start-up reconciliation of the spool with the index.

Run before the SCP accepts associations:
- temp files of interrupted writes are deleted (never acknowledged), except complete ones whose
  rename was lost to a power failure: those are renamed into place (``Spool.recover_temp_files``);
- complete spool files without an instance row are indexed. That covers the window in which
  a power loss can drop the last SQLite commits (``synchronous=NORMAL``) while the fsynced,
  renamed file survives: the instance was acknowledged, so it must be in the index;
- files that cannot be read back are moved to ``DATA_DIR/quarantine`` (never silently lost).
One ``spool_reconciled`` audit row records what was done.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from ..context import NodeContext
from ..spool import InvalidUID, Spool, validate_uid
from .dataset import header_summary, int_or_none
from .index import IndexUnavailable, InstanceRecord, indexed_among, record_instance

log = logging.getLogger("dsm_node.receive.reconcile")


@dataclass
class ReconcileReport:
    temp_files_removed: int = 0
    temp_files_completed: int = 0
    indexed: int = 0
    quarantined: list[str] = field(default_factory=list)
    already_indexed: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "temp_files_removed": self.temp_files_removed,
            "temp_files_completed": self.temp_files_completed,
            "indexed": self.indexed,
            "quarantined": len(self.quarantined),
            "already_indexed": self.already_indexed,
        }


def _record_for(path: Path, rel: str) -> InstanceRecord:
    ds = dcmread(path, stop_before_pixels=True)
    meta = ds.file_meta
    study, series, name = rel.split("/")
    sop = name[: -len(".dcm")]
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


def reconcile(ctx: NodeContext) -> ReconcileReport:
    """Make the index match the spool; see the module docstring. Idempotent."""
    storage = ctx.settings.storage
    spool = Spool(ctx.spool_dir, fsync=storage.fsync)
    report = ReconcileReport()
    promoted, removed = spool.recover_temp_files()
    report.temp_files_removed = len(removed)
    report.temp_files_completed = len(promoted)
    quarantine = storage.data_dir / "quarantine"
    for batch in _batches(spool.iter_files(), 2000):
        known = indexed_among(ctx.engine, batch)
        report.already_indexed += len(known)
        for rel in batch:
            if rel not in known:
                _index_orphan(ctx, spool, rel, quarantine, report)
    if report.temp_files_removed or report.temp_files_completed or report.indexed or report.quarantined:
        ctx.auditor.record("spool_reconciled", **report.as_dict(), quarantined_paths=report.quarantined[:100])
    else:
        ctx.auditor.record("spool_reconciled", **report.as_dict())
    return report


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _index_orphan(ctx: NodeContext, spool: Spool, rel: str, quarantine: Path, report: ReconcileReport) -> None:
    path = spool.root / rel
    try:
        outcome = record_instance(ctx, _record_for(path, rel))
    except IndexUnavailable:
        raise  # the database is down: start-up fails rather than quarantine good files
    except Exception as exc:  # unreadable or inconsistent file (pydicom raises many types)
        quarantine.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, quarantine / rel.replace("/", "_"))
        except OSError:
            pass
        report.quarantined.append(rel)
        log.error("spool file could not be indexed; quarantined",
                  extra={"path": rel, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return
    if outcome.status != "duplicate":
        report.indexed += 1
