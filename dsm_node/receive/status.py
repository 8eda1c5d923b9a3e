"""The C-STORE / C-ECHO response statuses the SCP answers with (PS3.4 B.2.3, PS3.7 C).

One table, used wherever the SCP returns a status; docs/conformance.md (table
``cstore-status``) and docs/receiving.md list the same codes, and a test keeps the conformance
table and this enum in step. pynetdicom is handed plain ``int`` values (see :func:`response`).
"""
from __future__ import annotations

from enum import IntEnum

from pydicom.dataset import Dataset


class StoreStatus(IntEnum):
    """A status the SCP sends, with when it sends it."""

    #: stored durably and indexed; also a duplicate, and an ignored non-CT object
    SUCCESS = 0x0000
    #: a non-CT storage SOP class while ``dicom.other_sop_classes`` is ``reject``
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: out of resources: free-space threshold, spool quota, or the disk filled up
    OUT_OF_RESOURCES = 0xA700
    #: out of resources: the database cannot record the instance now (transient, retry)
    INDEX_UNAVAILABLE = 0xA710
    #: the data set's SOP Class UID differs from the request's
    DATASET_MISMATCH = 0xA900
    #: cannot understand: not a readable data set (truncated, garbage, no Pixel Data)
    UNPARSEABLE = 0xC210
    #: cannot understand: unexpected error in the handler (the code pynetdicom uses for it)
    INTERNAL_ERROR = 0xC211
    #: cannot understand: a UID fails PS3.5 9.1 (nothing is written)
    INVALID_UID = 0xC212
    #: cannot understand: the UIDs contradict the request or what is stored
    UID_CONFLICT = 0xC213
    #: refused: larger than ``dicom.max_instance_bytes``
    TOO_LARGE = 0xC214


#: The longest Error Comment sent (LO, PS3.7 C.4).
MAX_ERROR_COMMENT = 64


def response(status: StoreStatus, comment: str | None = None) -> int | Dataset:
    """What a pynetdicom handler returns: the bare code, or a status data set with an Error
    Comment (ASCII, at most 64 characters) when there is a reason to give."""
    if not comment:
        return int(status)
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:MAX_ERROR_COMMENT]
    return ds
