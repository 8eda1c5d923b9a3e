"""Deliberately broken copies of a DICOM-SEG, made with pydicom, for the negative tests.

Each variant gets new Series/SOP Instance UIDs (so it can sit in the same study as the good
SEG) and a SeriesDescription saying what is wrong with it.

- ``reversed_frames``: the pixel frames of every segment in reverse order against their
  plane positions (a writer that sorted slices one way and positions the other way):
  the mask appears flipped head<->feet.
- ``shifted_one_slice``: every frame one slice further along the slice normal, position AND
  source-image reference moved together (a consistent off-by-one writer); frames pushed past
  the last CT slice are dropped.
- ``shifted_position_only``: only ImagePositionPatient moved by one slice (the references
  still name the original images).
- ``blank_labels``: every SegmentLabel emptied.
- ``mirrored``: every frame flipped left<->right (a RAS/LPS mix-up in the writer).
- ``recoloured``: the display colours of the first two segments swapped (or, with one
  segment, replaced by pure green).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import pack_bits
from pydicom.uid import generate_uid

# Broken copies of our SEG, what must catch each, and how much of the viewer run each needs
# (maxSegments: segment rows clicked; probes: boundary slices visited).
PLAN = {
    "reversed_frames": {"expect": {"labelmap", "segment_views", "seg_file"},
                        "maxSegments": 2, "probes": False},
    "shifted_one_slice": {"expect": {"labelmap", "segment_views", "seg_file"},
                          "maxSegments": 2, "probes": True},
    # OHIF places SEG frames by the source image they reference, not by position: the viewer
    # shows this one correctly, other readers (position-based) shifted. The file check sees it.
    "shifted_position_only": {"expect": {"seg_file"}, "maxSegments": 1, "probes": True},
    "blank_labels": {"expect": {"panel"}, "maxSegments": 0, "probes": False},
    "mirrored": {"expect": {"labelmap", "segment_views", "seg_file"},
                 "maxSegments": 1, "probes": False},
    "recoloured": {"expect": {"colours", "segment_views"}, "maxSegments": 1, "probes": False},
}

VARIANTS = ("reversed_frames", "shifted_one_slice", "shifted_position_only", "blank_labels",
            "mirrored", "recoloured")


def _frames(ds) -> np.ndarray:
    arr = ds.pixel_array
    if int(ds.NumberOfFrames) == 1 and arr.ndim == 2:
        arr = arr[None]
    return arr


def _set_frames(ds, frames: np.ndarray) -> None:
    ds.NumberOfFrames = int(frames.shape[0])
    if ds.SegmentationType == "BINARY":
        ds.PixelData = pack_bits(frames.astype(np.uint8).ravel(), pad=True)
    else:
        ds.PixelData = frames.astype(np.uint8 if ds.BitsAllocated == 8 else np.uint16).tobytes()
    # Uncompressed output whatever the input was.
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def _frame_segment(fg) -> int:
    if "SegmentIdentificationSequence" in fg:
        return int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    return 0


def _frame_ipp(fg) -> np.ndarray:
    return np.array(fg.PlanePositionSequence[0].ImagePositionPatient, float)


def _normal(ds) -> np.ndarray:
    sh = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(sh.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def _renew(ds, what: str, number_offset: int) -> None:
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = f"BROKEN ({what})"[:64]
    ds.SeriesNumber = int(ds.get("SeriesNumber", 900) or 900) + number_offset


def reversed_frames(ds, ct=None) -> None:
    frames = _frames(ds)
    pf = ds.PerFrameFunctionalGroupsSequence
    n = _normal(ds)
    by_seg: dict[int, list[int]] = {}
    for i, fg in enumerate(pf):
        by_seg.setdefault(_frame_segment(fg), []).append(i)
    out = frames.copy()
    for idxs in by_seg.values():
        order = sorted(idxs, key=lambda i: float(_frame_ipp(pf[i]) @ n))
        for a, b in zip(order, order[::-1]):
            out[a] = frames[b]
    _set_frames(ds, out)


def mirrored(ds, ct=None) -> None:
    _set_frames(ds, _frames(ds)[:, :, ::-1].copy())


def blank_labels(ds, ct=None) -> None:
    for s in ds.SegmentSequence:
        s.SegmentLabel = ""


def recoloured(ds, ct=None) -> None:
    segs = ds.SegmentSequence
    if len(segs) >= 2:
        a, b = segs[0].RecommendedDisplayCIELabValue, segs[1].RecommendedDisplayCIELabValue
        segs[0].RecommendedDisplayCIELabValue, segs[1].RecommendedDisplayCIELabValue = b, a
    else:
        segs[0].RecommendedDisplayCIELabValue = [57498, 10747, 54274]  # sRGB (0, 255, 0)


def _shift(ds, ct, move_reference: bool) -> None:
    """Move every frame one CT slice along the normal (ct: checks.CtSeries)."""
    frames = _frames(ds)
    pf = ds.PerFrameFunctionalGroupsSequence
    keep = []
    for i, fg in enumerate(pf):
        k = ct.slice_of(_frame_ipp(fg))
        if k is None or k + 1 >= len(ct.ipp):
            continue  # pushed out of the volume
        fg.PlanePositionSequence[0].ImagePositionPatient = [
            f"{v:.6g}" for v in ct.ipp[k + 1]]
        if move_reference and "DerivationImageSequence" in fg:
            for der in fg.DerivationImageSequence:
                for src in der.SourceImageSequence:
                    src.ReferencedSOPInstanceUID = ct.sop_uids[k + 1]
        keep.append(i)
    if len(keep) != len(pf):
        ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([pf[i] for i in keep])
        frames = frames[keep]
    _set_frames(ds, frames)
    if move_reference and "ReferencedSeriesSequence" in ds:
        pass  # the referenced instances are still the CT series' instances


def shifted_one_slice(ds, ct) -> None:
    _shift(ds, ct, move_reference=True)


def shifted_position_only(ds, ct) -> None:
    _shift(ds, ct, move_reference=False)


def make_variant(seg_path, variant: str, out_dir, ct=None) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant}; known: {VARIANTS}")
    ds = pydicom.dcmread(seg_path)
    ds = copy.deepcopy(ds)
    globals()[variant](ds, ct)
    _renew(ds, variant.replace("_", " "), 100 + VARIANTS.index(variant))
    out = Path(out_dir) / f"SEG_broken_{variant}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def shifted_lesion_sr(sr_path, out_dir, dx: float = 40.0) -> Path:
    """A copy of our SR whose lesion lines (the SCOORDs of Long/Short axis) are moved ``dx``
    pixels to the right on the same image: values and references unchanged, so only a check
    of where the lines are drawn can see it."""
    ds = pydicom.dcmread(sr_path)

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "NUM" and name in ("Long axis", "Short axis"):
                for sub in it.get("ContentSequence", []):
                    if sub.ValueType == "SCOORD":
                        data = [float(v) for v in sub.GraphicData]
                        sub.GraphicData = [v + dx if i % 2 == 0 else v for i, v in enumerate(data)]
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesDescription = f"BROKEN lesion lines shifted {dx:g} px"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sr_lesion_lines_shifted.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
