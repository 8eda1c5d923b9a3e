"""What the SEG, SR and key-image writers share: the error they raise, the checks and fills
on the source series, the character set they copy, the Tracking ID that links a segment to its
measurement group, and the atomic file write."""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .options import ResultOptions
from .segments import WITH_TUMORS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.multival import MultiValue

    from model.catalog import ClassEntry

    from ..volume.assembly import Volume


class ResultError(ValueError):
    """The inputs cannot be encoded as results (missing UIDs, labels off-catalog or off-grid)."""


#: Type 2 patient/study attributes highdicom copies from the first source image (and fails on
#: when absent, as in some anonymised series); added empty to our in-memory headers.
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


@contextlib.contextmanager
def quiet_source_warnings() -> Iterator[None]:
    """highdicom warns about source values it copies unchanged (e.g. a one-component
    PatientName); they are not actionable here, so keep logs free of them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def check_source(volume: Volume) -> None:
    """Refuse sources that cannot carry results; fill absent Type 2 attributes with empty values."""
    for header in volume.headers:
        for attr in _TYPE2_COPIED:
            if attr not in header:
                setattr(header, attr, "")
    missing = [name for name, v in (("StudyInstanceUID", volume.study_instance_uid),
                                    ("SeriesInstanceUID", volume.series_instance_uid),
                                    ("FrameOfReferenceUID", volume.frame_of_reference_uid)) if not v]
    if missing:
        raise ResultError(f"the source series has no {', '.join(missing)}: results could not be placed in "
                          f"the study (repair the source UIDs)")
    empty_sop = [f.path for f in volume.frames if not f.sop_instance_uid or not f.sop_class_uid]
    if empty_sop:
        raise ResultError(f"{len(empty_sop)} source instance(s) without SOP Class/Instance UID, e.g. {empty_sop[0]}")


def character_set(volume: Volume) -> str | Sequence[str] | None:
    """SpecificCharacterSet for the results: the source's, or ISO_IR 100 where the source leaves it
    empty (default repertoire; highdicom refuses an empty value, Latin-1 is a superset of it)."""
    value: str | MultiValue[str] | None = volume.headers[0].get("SpecificCharacterSet")
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not any(str(v).strip() for v in values):
        return "ISO_IR 100"
    if len(values) > 1 and not str(values[0]).strip():
        return values  # ISO 2022 code extensions: leave as the source has them
    return value


def tracking_identifier(entry: ClassEntry, options: ResultOptions, method: str | None = None) -> str:
    """The human-readable Tracking ID of a segment: the same text in the SEG and in the SR's
    measurement group (with the same Tracking UID), so viewers can match them by either. It says
    when an organ segment includes its tumours."""
    what = f"{entry.name} incl. tumours" if method == WITH_TUMORS else entry.name
    return f"{what} ({options.model_name})"[:64]


def save(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a DICOM file atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            dataset.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
