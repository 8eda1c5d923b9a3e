"""The store decision: what one received C-STORE data set gets, before anything is written.

Given the request (its SOP Class and Instance UIDs, the encoded data set, the negotiated
transfer syntax) and the node's policy (``dicom.max_instance_bytes``,
``dicom.other_sop_classes``), :meth:`StorePolicy.decide` returns :class:`Accept` (a CT image
to store, its element headers parsed without decoding pixels) or :class:`Ignore` (another
SOP class, acknowledged and not kept), or raises :class:`Refusal` with the status, the
Error Comment and the metrics/audit code. It touches no disk, database or network; what the
spool and the index then find (duplicate, conflict, no space) is :mod:`.store`'s part.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pydicom.uid import DeflatedExplicitVRLittleEndian

from ..settings import Dicom
from ..spool import InvalidUID, relative_path, validate_uid
from .dataset import PROCESSED_SOP_CLASSES, DatasetTooLarge, ParsedInstance, UnparseableDataset, parse_dataset
from .index import SOPInstanceConflict
from .status import StoreStatus

#: Refusal codes audited as ``instance_conflict``: the instance contradicts what is stored.
CONFLICT_CODES = frozenset({"sop_uid_conflict", "index_conflict"})


class Refusal(Exception):
    """An instance is refused: ``status`` goes to the sender with ``reason`` as its Error
    Comment; ``code`` labels the metric and the audit row, which also carries the UIDs known."""

    def __init__(self, status: StoreStatus, reason: str, code: str, *, study_uid: str | None = None,
                 series_uid: str | None = None, sop_instance_uid: str | None = None, **detail: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_instance_uid = sop_instance_uid
        self.detail = detail  # more audit detail (the stored copy's UIDs for a conflict)

    @property
    def is_conflict(self) -> bool:
        return self.code in CONFLICT_CODES


def conflict_refusal(exc: SOPInstanceConflict, ids: dict[str, str]) -> Refusal:
    """Refusal of a known SOP Instance UID under another study, series or SOP class."""
    return Refusal(StoreStatus.UID_CONFLICT, str(exc), "sop_uid_conflict", conflict=exc.kind,
                   stored_study_uid=exc.study_uid, stored_series_uid=exc.series_uid,
                   stored_sop_class_uid=exc.sop_class_uid, **ids)


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE request as received: the command's UIDs and the encoded data set."""

    sop_class_uid: str  # Affected SOP Class UID of the command
    sop_instance_uid: str  # Affected SOP Instance UID of the command
    data: io.BytesIO  # the data set, in ``transfer_syntax``, without file meta
    transfer_syntax: str

    @classmethod
    def from_event(cls, event: Any) -> StoreRequest:
        """From pynetdicom's EVT_C_STORE event (the data set stays undecoded)."""
        req = event.request
        return cls(str(req.AffectedSOPClassUID or ""), str(req.AffectedSOPInstanceUID or ""), req.DataSet,
                   str(event.context.transfer_syntax))

    @property
    def size(self) -> int:
        buf = self.data
        buf.seek(0, 2)
        return buf.tell()


@dataclass(frozen=True)
class Ignore:
    """A SOP class the node does not process, acknowledged with Success and not stored."""

    sop_class_uid: str
    study_uid: str | None
    series_uid: str | None


@dataclass(frozen=True)
class Accept:
    """A CT image to store: its UIDs are valid and agree with the request."""

    request: StoreRequest
    parsed: ParsedInstance
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    size: int  # bytes of the data set as received

    @property
    def path(self) -> str:
        """Where it goes in the spool (relative)."""
        return relative_path(self.study_uid, self.series_uid, self.sop_instance_uid)

    @property
    def ids(self) -> dict[str, str]:
        """The UIDs as audit detail."""
        return dict(study_uid=self.study_uid, series_uid=self.series_uid, sop_instance_uid=self.sop_instance_uid)


class StorePolicy:
    """The checks every C-STORE data set goes through, in order (cheapest first):
    size limit -> SOP class policy -> element headers parsed -> UIDs valid (PS3.5 9.1) ->
    UIDs agree with the request -> Pixel Data present."""

    def __init__(self, max_instance_bytes: int, ignore_others: bool) -> None:
        self.max_instance_bytes = max_instance_bytes
        self.ignore_others = ignore_others

    @classmethod
    def from_settings(cls, dicom: Dicom) -> StorePolicy:
        return cls(dicom.max_instance_bytes, dicom.other_sop_classes == "ignore")

    def decide(self, request: StoreRequest) -> Accept | Ignore:
        """Accept or Ignore ``request``; raises :class:`Refusal` otherwise."""
        size = request.size
        if size > self.max_instance_bytes:
            raise Refusal(StoreStatus.TOO_LARGE, f"instance larger than {self.max_instance_bytes} bytes", "too_large")
        cmd_class, ts = request.sop_class_uid, request.transfer_syntax
        if cmd_class not in PROCESSED_SOP_CLASSES:
            return self._other_class(request)

        try:
            p = parse_dataset(request.data, ts, self.max_instance_bytes)
        except DatasetTooLarge as exc:
            raise Refusal(StoreStatus.TOO_LARGE, str(exc), "too_large") from None
        except UnparseableDataset as exc:
            raise Refusal(StoreStatus.UNPARSEABLE, str(exc), "unparseable") from None
        study_uid, series_uid, sop_uid = p.study_uid, p.series_uid, p.sop_instance_uid
        try:
            validate_uid(sop_uid, "SOPInstanceUID")
            validate_uid(p.sop_class_uid, "SOPClassUID")
            validate_uid(study_uid, "StudyInstanceUID")
            validate_uid(series_uid, "SeriesInstanceUID")
        except InvalidUID as exc:
            raise Refusal(StoreStatus.INVALID_UID, str(exc), "invalid_uid") from None
        assert study_uid and series_uid and sop_uid and p.sop_class_uid
        ids = dict(study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid)
        if sop_uid != request.sop_instance_uid:
            raise Refusal(StoreStatus.UID_CONFLICT, "SOP Instance UID of the data set differs from the request's",
                          "uid_mismatch", **ids)
        if p.sop_class_uid != cmd_class:
            raise Refusal(StoreStatus.DATASET_MISMATCH, "SOP Class UID of the data set differs from the request's",
                          "sop_class_mismatch", **ids)
        if not p.has_pixel_data:
            raise Refusal(StoreStatus.UNPARSEABLE, "image without Pixel Data (truncated?)", "unparseable", **ids)
        return Accept(request, p, study_uid, series_uid, sop_uid, size)

    def _other_class(self, request: StoreRequest) -> Ignore:
        if not self.ignore_others:
            raise Refusal(StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                          f"SOP class {request.sop_class_uid} not accepted by this node", "sop_class")
        # Its study and series, when readable, only label the instance_ignored audit summary.
        study = series = None
        if request.transfer_syntax != DeflatedExplicitVRLittleEndian:  # never inflate what is not kept
            try:
                parsed = parse_dataset(request.data, request.transfer_syntax, self.max_instance_bytes)
                study, series = parsed.study_uid, parsed.series_uid
            except UnparseableDataset:
                pass
        return Ignore(request.sop_class_uid, study, series)
