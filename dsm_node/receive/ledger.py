"""Per-association bookkeeping: what an association received, and the audit rows it makes.

An :class:`AssociationLedger` is opened when an association request is accepted and closed
at release or abort. It counts what was stored, found duplicate, ignored or refused (per
series and in total, with bytes and duration) and turns that into audit rows: per-series
summaries (``instances_stored``, ``instance_ignored``) at least every
:data:`FLUSH_INTERVAL_S` and at the end, one ``storage_full`` row per association instead of
one per refused instance, and the closing ``association_released``/``association_aborted``
row. It writes nothing itself: the SCP writes the :class:`AuditRow` values it returns, so the
ledger is testable without a database or a network. :class:`Ledgers` holds the open ones.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..audit import MAJOR_FAILURE, MINOR_FAILURE, SERIOUS_FAILURE
from .decision import Refusal
from .gate import StreamGuard
from .status import StoreStatus

FLUSH_INTERVAL_S = 60.0  # long associations get their per-series audit summary at least this often

IGNORED_REASON = "SOP class not processed (dicom.other_sop_classes=ignore): acknowledged, not stored"


@dataclass(frozen=True)
class AuditRow:
    """One audit event to write: ``auditor.record(event_type, **detail)``."""

    event_type: str
    detail: dict[str, Any]


@dataclass
class SeriesTally:
    study_uid: str | None
    count: int = 0
    bytes: int = 0
    duplicates: int = 0
    sop_classes: set[str] = field(default_factory=set)


def _totals() -> dict[str, int]:
    return {"stored": 0, "duplicates": 0, "ignored": 0, "refused": 0, "bytes": 0}


@dataclass
class AssociationLedger:
    calling_ae: str
    address: str
    called_ae: str
    tls_subject: str | None = None
    started: float = field(default_factory=time.monotonic)
    last_flush: float = field(default_factory=time.monotonic)
    stored: dict[str, SeriesTally] = field(default_factory=dict)
    ignored: dict[str, SeriesTally] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=_totals)
    storage_full_audited: bool = False
    established: bool = False
    finalized: bool = False
    # incoming size of the C-STORE data set being received (EVT_PDU_RECV, DUL thread)
    incoming: int = 0
    oversize: bool = False
    guard: StreamGuard | None = None  # the connection's PDU guard (its violation, if it closed it)

    # What arrived ---------------------------------------------------------------------------
    def series(self, series_uid: str, study_uid: str) -> SeriesTally:
        """The tally of a stored series (opened at its first accepted instance)."""
        tally = self.stored.get(series_uid)
        if tally is None:
            tally = self.stored[series_uid] = SeriesTally(study_uid)
        return tally

    def record_stored(self, series_uid: str, study_uid: str, nbytes: int) -> None:
        tally = self.series(series_uid, study_uid)
        tally.count += 1
        tally.bytes += nbytes
        self.totals["stored"] += 1
        self.totals["bytes"] += nbytes

    def record_duplicate(self, series_uid: str, study_uid: str) -> None:
        self.series(series_uid, study_uid).duplicates += 1
        self.totals["duplicates"] += 1

    def record_ignored(self, series_uid: str | None, study_uid: str | None, sop_class_uid: str) -> None:
        tally = self.ignored.setdefault(series_uid or "", SeriesTally(study_uid))
        tally.count += 1
        tally.sop_classes.add(sop_class_uid)
        self.totals["ignored"] += 1

    def record_refused(self, refusal: Refusal) -> AuditRow | None:
        """Count a refusal; its audit row, or None when it is only logged (a repeated
        ``storage_full``: every further instance would repeat it)."""
        self.totals["refused"] += 1
        detail = refusal_detail(refusal)
        actor = {"actor_ae": self.calling_ae, "actor_address": self.address,
                 "study_uid": refusal.study_uid, "series_uid": refusal.series_uid}
        if refusal.status == StoreStatus.OUT_OF_RESOURCES:
            if self.storage_full_audited:
                return None
            self.storage_full_audited = True
            return AuditRow("storage_full", {"outcome": MAJOR_FAILURE, **actor, **detail})
        event = "instance_conflict" if refusal.is_conflict else "instance_rejected"
        return AuditRow(event, {"outcome": SERIOUS_FAILURE, **actor, **detail})

    def feed_pdata(self, values: Iterable[bytes | None], limit: int) -> bool:
        """Count the data set bytes of one P-DATA-TF PDU's value items (each starts with its
        message control header); True once, when the data set being received grows past
        ``limit`` (the association is then aborted and the instance counted as refused)."""
        for value in values:
            if not value:
                continue
            if value[0] & 1:  # command fragment: a new message starts
                self.incoming = 0
                continue
            self.incoming += len(value) - 1
            if self.incoming > limit and not self.oversize:
                self.oversize = True
                self.totals["refused"] += 1
                return True
        return False

    # Audit rows -----------------------------------------------------------------------------
    def flush_due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.last_flush > FLUSH_INTERVAL_S

    def take_summaries(self, now: float | None = None) -> list[AuditRow]:
        """The per-series summaries since the last call (series with nothing to say are left out)."""
        stored, ignored = self.stored, self.ignored
        self.stored, self.ignored = {}, {}
        self.last_flush = time.monotonic() if now is None else now
        actor = {"actor_ae": self.calling_ae, "actor_address": self.address}
        rows = [
            AuditRow("instances_stored", {**actor, "study_uid": t.study_uid, "series_uid": series_uid,
                                          "count": t.count, "bytes": t.bytes, "duplicates": t.duplicates})
            for series_uid, t in stored.items() if t.count or t.duplicates
        ]
        rows += [
            AuditRow("instance_ignored", {**actor, "study_uid": t.study_uid, "series_uid": series_uid or None,
                                          "count": t.count, "sop_classes": sorted(t.sop_classes),
                                          "reason": IGNORED_REASON})
            for series_uid, t in ignored.items()
        ]
        return rows

    def closing_row(self, event_type: str, max_instance_bytes: int, now: float | None = None,
                    **extra: Any) -> AuditRow:
        """The ``association_released``/``association_aborted`` row with the totals; a guard
        violation or an oversized data set gives the reason."""
        outcome = 0 if event_type == "association_released" else MINOR_FAILURE
        if self.oversize:
            extra["reason"] = f"data set larger than twice dicom.max_instance_bytes ({max_instance_bytes})"
        if self.guard is not None and self.guard.violation:
            extra["reason"] = self.guard.violation
            outcome = SERIOUS_FAILURE
        duration = (time.monotonic() if now is None else now) - self.started
        return AuditRow(event_type, {"outcome": outcome, "actor_ae": self.calling_ae, "actor_address": self.address,
                                     "duration_s": round(duration, 3), **self.totals, **extra})


def refusal_detail(refusal: Refusal) -> dict[str, Any]:
    """A refusal's status, reason and UIDs as audit (or log) detail."""
    detail: dict[str, Any] = {"status": f"0x{refusal.status:04X}", "reason": refusal.reason, **refusal.detail}
    if refusal.sop_instance_uid:
        detail["sop_instance_uid"] = refusal.sop_instance_uid
    return detail


class Ledgers:
    """The ledgers of associations from request to release/abort, by association."""

    def __init__(self, max_associations: int) -> None:
        self.max_associations = max_associations
        self._open: dict[int, AssociationLedger] = {}
        self._lock = threading.Lock()

    def open(self, assoc: Any, ledger: AssociationLedger) -> bool:
        """Open ``ledger`` for ``assoc``; False when ``max_associations`` are open already."""
        with self._lock:
            if len(self._open) >= self.max_associations:
                return False
            self._open[id(assoc)] = ledger
            return True

    def get(self, assoc: Any) -> AssociationLedger | None:
        return self._open.get(id(assoc))

    def discard(self, assoc: Any) -> AssociationLedger | None:
        with self._lock:
            return self._open.pop(id(assoc), None)

    def close(self, assoc: Any) -> AssociationLedger | None:
        """Remove and return the ledger of an established association, once (None after)."""
        with self._lock:
            ledger = self._open.pop(id(assoc), None)
            if ledger is None or ledger.finalized or not ledger.established:
                return None
            ledger.finalized = True
            return ledger

    def counts(self) -> tuple[int, int]:
        """(established, still negotiating)."""
        with self._lock:
            established = sum(1 for ledger in self._open.values() if ledger.established)
            return established, len(self._open) - established
