"""Find DICOM files and what the viewer needs to open them (study UID, SEG/SR series)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom


@dataclass(frozen=True)
class DicomFile:
    path: Path
    study: str
    series: str
    sop_instance: str
    modality: str
    series_description: str


def _iter_paths(inputs):
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from (q for q in sorted(p.rglob("*")) if q.is_file())
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(p)


def scan(inputs) -> list[DicomFile]:
    """All DICOM Part 10 files under the given files/directories (non-DICOM files skipped)."""
    out = []
    for p in _iter_paths(inputs):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID",
                                                "SOPInstanceUID", "Modality",
                                                "SeriesDescription"])
        except Exception:  # not DICOM (README, NIfTI, ...): ignore
            continue
        if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
            continue
        out.append(DicomFile(p, str(ds.StudyInstanceUID), str(ds.get("SeriesInstanceUID", "")),
                             str(ds.SOPInstanceUID), str(ds.get("Modality", "")),
                             str(ds.get("SeriesDescription", ""))))
    return out


def studies(files: list[DicomFile]) -> dict[str, list[DicomFile]]:
    out: dict[str, list[DicomFile]] = {}
    for f in files:
        out.setdefault(f.study, []).append(f)
    return out


def series_of(files: list[DicomFile], modality: str) -> list[str]:
    seen: list[str] = []
    for f in files:
        if f.modality == modality and f.series not in seen:
            seen.append(f.series)
    return seen
