"""A label map made elsewhere (another model, a hand correction) as the node's results: the CT
series read and checked exactly as the node does it, the label map checked against its grid, and
the summary of what was written. ``dsm-node export`` (dsm_node/commands/export.py) is the
command; the encoding between the two is outputs.write_results, the one the node runs.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

from ..volume import assemble_volume, load_labels
from .inputs import check_ct_source, checked_reading

if TYPE_CHECKING:
    import numpy as np

    from ..volume import Volume
    from .outputs import ResultSet

#: One segment / lesion row and the whole summary that ``dsm-node export --json`` prints.
SegmentRow = TypedDict("SegmentRow", {
    "number": int, "class": str, "label": int, "content": str, "includes": list[str], "volume_cm3": float,
    "volume_incl_tumours_cm3": float | None, "mean_hu": float | None})


class LesionRow(TypedDict):
    tracking_identifier: str
    tracking_uid: str
    volume_cm3: float
    long_axis_mm: float
    short_axis_mm: float
    max_diameter_mm: float | None
    slice: int


class ExportSummary(TypedDict):
    series_instance_uid: str
    slices: int
    seg: str | None
    seg_type: str | None
    seg_frames: int
    sr: str
    no_findings: bool
    key_images: list[str]
    segments: list[SegmentRow]
    lesions: list[LesionRow]
    seconds: dict[str, float]


def read_label_map(files: Sequence[str], labels_path: str | os.PathLike[str]) -> tuple[Volume, np.ndarray]:
    """The CT series of ``files`` and the label map at ``labels_path`` on its grid.

    The series is assembled and checked as a CT source before the labels are read, so that a
    series the node would refuse is refused here before anything is decoded or encoded. The
    NIfTI must be on the series' grid (permuted/flipped axes accepted). Raises VolumeError,
    InputError or ValueError with the reason.
    """
    with checked_reading():
        volume = assemble_volume(list(files))
    check_ct_source(volume)
    return volume, load_labels(labels_path, volume)


def summarize(volume: Volume, results: ResultSet, *, read_s: float, encode_s: float) -> ExportSummary:
    """What was written for ``volume``: the files, each segment's class, content and volumes,
    each lesion's measurements, and the time spent (reading, encoding and writing, per stage)."""
    seg, sr, key = results.seg, results.sr, results.key_images
    return {
        "series_instance_uid": volume.series_instance_uid,
        "slices": volume.shape[0],
        "seg": str(seg.path) if seg else None,
        "seg_type": seg.seg_type if seg else None,
        "seg_frames": int(seg.dataset.NumberOfFrames) if seg else 0,
        "sr": str(sr.path),
        "no_findings": sr.no_findings,
        "key_images": [str(p) for p in key.paths] if key else [],
        "segments": [
            {"number": s.number, "class": s.entry.name, "label": s.label, "content": s.method,
             "includes": list(s.included_tumors),
             "volume_cm3": round(sr.measurements[s.label].volume_cm3, 3),
             "volume_incl_tumours_cm3": round(sr.with_tumors[s.label].volume_cm3, 3) if s.label in sr.with_tumors
             else None,
             "mean_hu": None if sr.measurements[s.label].mean_hu is None
             else round(sr.measurements[s.label].mean_hu, 1)}  # type: ignore[arg-type]  # not None: checked
            for s in (seg.segments if seg else [])
        ],
        "lesions": [
            {"tracking_identifier": les.tracking_identifier, "tracking_uid": les.tracking_uid,
             "volume_cm3": round(les.volume_cm3, 3), "long_axis_mm": round(les.long_axis.length_mm, 1),
             "short_axis_mm": round(les.short_axis.length_mm, 1),
             "max_diameter_mm": None if les.max_diameter_mm is None else round(les.max_diameter_mm, 1),
             "slice": les.slice_index}
            for les in sr.lesions
        ],
        "seconds": {"read": round(read_s, 2), "encode_and_write": round(encode_s, 2),
                    **{k: round(v, 2) for k, v in results.timings.items()}},
    }
