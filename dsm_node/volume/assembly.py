"""Assemble one CT series (single-frame CT or Enhanced CT) into a HU volume on the source grid.

Rules (docs/results.md, spec "Volume assembly"):

* slices are ordered by their position along the slice normal (ImagePositionPatient · n),
  never by InstanceNumber;
* the series is rejected with a :class:`VolumeError` naming the reason when it has more than one
  orientation, inconsistent rows/columns/pixel spacing, two different instances at one position,
  a gap (missing slices), non-uniform spacing, or slices that are not stacked along the normal
  (gantry tilt: resampling is not implemented);
* stored values go through the Modality LUT (RescaleSlope/Intercept, per slice or per frame) to
  HU; PixelPaddingValue (and PixelPaddingRangeLimit) become ``padding_hu``. The HU are int16
  when every value is an integer in the int16 range (integer slope and intercept, no Modality
  LUT Sequence: nearly every CT), float32 otherwise - the same numbers either way, int16 at half
  the memory of the largest array the node holds (docs/memory.md);
* pixel data is decoded one slice / frame at a time into a preallocated array (the installed
  pydicom pixel decoders + pylibjpeg plugins cover JPEG, JPEG-LS, JPEG 2000 and RLE), and only
  headers (no pixel data) are kept, for the result writers;
* memory is bounded before anything is allocated or decoded: slices x Rows x Columns must not
  exceed ``max_voxels``, and a JPEG / JPEG-LS / JPEG 2000 frame whose own codestream declares
  another size than Rows x Columns is refused (a decoder allocates what the codestream says: a
  few bytes can ask for gigabytes).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.spill import file_backed, release

from .geometry import affine_from_dicom, lps_to_ras

log = logging.getLogger(__name__)

#: Default bound of slices x Rows x Columns (int16: 1 GiB), e.g. 2048 slices of 512 x 512.
DEFAULT_MAX_VOXELS = 512 * 512 * 2048

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class VolumeError(ValueError):
    """The files cannot be assembled into one regular volume; ``reason`` says why.

    ``code`` is a short machine-readable category: ``no_files``, ``unreadable``, ``not_image``,
    ``mixed_series``, ``multiframe``, ``orientation``, ``dimensions``, ``pixel_spacing``,
    ``duplicate``, ``missing_slice``, ``spacing``, ``tilt``, ``decode``, ``too_large``.
    """

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class SourceFrame:
    """Where one slice of the volume came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # 1-based frame of a multi-frame instance; None for single-frame
    path: str


@dataclass
class Volume:
    """A CT series on its own grid.

    ``hu[k, j, i]`` is slice k (ascending along the slice normal), row j, column i;
    ``affine_lps`` maps ``(i, j, k, 1)`` to patient LPS mm; ``spacing`` is (slice, row, column) mm,
    the array's axis order.
    """

    hu: np.ndarray  # int16 HU (float32 where the rescale gives fractions or leaves int16)
    affine_lps: np.ndarray
    spacing: tuple[float, float, float]
    frames: tuple[SourceFrame, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    headers: list[Dataset]  # single-frame: one per slice in slice order; multi-frame: [the instance]
    slice_thickness: float | None = None
    notes: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def source_instances(self) -> list[tuple[str, str]]:
        """(SOPClassUID, SOPInstanceUID) of each slice, in slice order."""
        return [(f.sop_class_uid, f.sop_instance_uid) for f in self.frames]

    @property
    def patient_sex(self) -> str:
        """DICOM PatientSex of the series ("M", "F", "O" or ""): the model leaves out classes of
        the other sex (model.segment.sex_of)."""
        value = self.headers[0].get("PatientSex", "") if self.headers else ""
        return str(value or "").strip()

    @property
    def is_multiframe(self) -> bool:
        return self.frames[0].frame_number is not None

    @property
    def affine_ras(self) -> np.ndarray:
        """RAS affine of index (i, j, k): pair it with :meth:`nifti_array`."""
        return lps_to_ras(self.affine_lps)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    def nifti_array(self, array: np.ndarray | None = None) -> np.ndarray:
        """``array`` (default: hu), shaped like ``hu``, as nibabel's (i, j, k) view."""
        return (self.hu if array is None else array).transpose(2, 1, 0)

    def to_nifti(self, array: np.ndarray | None = None):  # -> nibabel.Nifti1Image
        import nibabel as nib

        img = nib.Nifti1Image(np.ascontiguousarray(self.nifti_array(array)), self.affine_ras)
        img.set_qform(self.affine_ras, code=1)
        img.set_sform(self.affine_ras, code=1)
        return img

    def source_frame_order(self) -> np.ndarray:
        """For a multi-frame source: slice index of frame 1, 2, ... (to reorder per-slice data)."""
        if not self.is_multiframe:
            return np.arange(len(self.frames))
        order = np.empty(len(self.frames), dtype=np.int64)
        for k, f in enumerate(self.frames):
            order[int(f.frame_number) - 1] = k  # type: ignore[arg-type]
        return order


# ----------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    header_index: int
    frame_number: int | None
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None
    use_modality_lut_sequence: bool = False
    s: float = 0.0


def _floats(value, n: int, what: str, where: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise VolumeError(f"{where}: {what} is not numeric ({value!r})", "not_image") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise VolumeError(f"{where}: {what} must have {n} finite values, got {value!r}", "not_image")
    return arr


def _group_attr(per_frame: Dataset | None, shared: Dataset | None, seq: str, attr: str):
    for item in (per_frame, shared):
        if item is not None and seq in item and len(item[seq].value) > 0:
            inner = item[seq].value[0]
            if attr in inner and inner[attr].value not in (None, ""):
                return inner[attr].value
    return None


def _uid(ds: Dataset, attr: str, meta_attr: str, notes: list[str], where: str) -> str:
    value = str(ds.get(attr, "") or "").strip()
    if not value:
        value = str(getattr(getattr(ds, "file_meta", None), meta_attr, "") or "").strip()
        if value:
            notes.append(f"{where}: empty {attr}, used {meta_attr} from the file meta information")
            setattr(ds, attr, value)
    return value


def _read_header(path: str) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise VolumeError(f"{path}: not readable as DICOM ({exc})", "unreadable") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise VolumeError(f"{path}: not an image (no Rows/Columns)", "not_image")
    return ds


def _frames_of(ds: Dataset, header_index: int, path: str, notes: list[str]) -> list[_Frame]:
    where = os.path.basename(path)
    sop_class = _uid(ds, "SOPClassUID", "MediaStorageSOPClassUID", notes, where)
    sop_uid = _uid(ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID", notes, where)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(f"{where}: SamplesPerPixel {ds.SamplesPerPixel} (CT must be greyscale)", "not_image")
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multiframe = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames: list[_Frame] = []
    if not multiframe:
        if n_frames != 1:
            raise VolumeError(f"{where}: {n_frames} frames without functional groups", "multiframe")
        for attr in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if attr not in ds or ds[attr].value in (None, ""):
                raise VolumeError(f"{where}: no {attr}", "not_image")
        has_lut_seq = "ModalityLUTSequence" in ds and "RescaleSlope" not in ds
        frames.append(_Frame(
            header_index, None, path, sop_class, sop_uid,
            _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", where),
            _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
            tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", where)),  # type: ignore[arg-type]
            rows, cols,
            float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
            float(ds.SliceThickness) if ds.get("SliceThickness") not in (None, "") else None,
            has_lut_seq,
        ))
        return frames

    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])
    if per_frame and len(per_frame) != n_frames:
        raise VolumeError(
            f"{where}: {len(per_frame)} per-frame functional group items for {n_frames} frames", "multiframe")
    for f in range(n_frames):
        pf = per_frame[f] if per_frame else None
        fw = f"{where} frame {f + 1}"
        ipp = _group_attr(pf, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop = _group_attr(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group_attr(pf, shared, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or spacing is None:
            missing = [n for n, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop),
                                      ("PixelSpacing", spacing)) if v is None]
            raise VolumeError(f"{fw}: no {', '.join(missing)} in the functional groups", "not_image")
        slope = _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_attr(pf, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        thickness = _group_attr(pf, shared, "PixelMeasuresSequence", "SliceThickness")
        frames.append(_Frame(
            header_index, f + 1, path, sop_class, sop_uid,
            _floats(ipp, 3, "ImagePositionPatient", fw), _floats(iop, 6, "ImageOrientationPatient", fw),
            tuple(_floats(spacing, 2, "PixelSpacing", fw)),  # type: ignore[arg-type]
            rows, cols,
            float(slope) if slope is not None else float(ds.get("RescaleSlope", 1) or 1),
            float(intercept) if intercept is not None else float(ds.get("RescaleIntercept", 0) or 0),
            float(thickness) if thickness is not None else None,
        ))
    return frames


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """Stored-value range marked as padding, or None; fixes the US/SS ambiguity by hand."""
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue in (None, ""):
        return None
    bits = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    def fix(v) -> int:
        if isinstance(v, (bytes, bytearray)):
            v = int.from_bytes(bytes(v[:2]), "little", signed=signed)
        v = int(v)
        if signed and v >= 2 ** (bits - 1):
            v -= 2 ** bits
        elif not signed and v < 0:
            v += 2 ** bits
        return v

    lo = fix(ds.PixelPaddingValue)
    hi = lo
    if "PixelPaddingRangeLimit" in ds and ds.PixelPaddingRangeLimit not in (None, ""):
        limit = fix(ds.PixelPaddingRangeLimit)
        lo, hi = min(lo, limit), max(lo, limit)
    return lo, hi


def _check_geometry(frames: list[_Frame], *, orientation_tol: float, spacing_rel_tol: float,
                    spacing_abs_tol: float, inplane_tol_fraction: float, headers: list[Dataset]) -> tuple[np.ndarray, float]:
    """Validate the stack; sort ``frames`` in place; return (slice normal, slice spacing)."""
    ref = frames[0]
    # -- one orientation -----------------------------------------------------------------------
    orients = np.stack([f.orientation for f in frames])
    distinct: list[np.ndarray] = []
    for o in orients:
        if not any(np.max(np.abs(o - d)) <= orientation_tol for d in distinct):
            distinct.append(o)
    if len(distinct) > 1:
        shown = "; ".join("\\".join(f"{v:g}" for v in np.round(d, 4)) for d in distinct[:4])
        raise VolumeError(f"{len(distinct)} different ImageOrientationPatient values in one series ({shown})",
                          "orientation")
    row_cos, col_cos = ref.orientation[:3], ref.orientation[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3 \
            or abs(float(row_cos @ col_cos)) > 1e-3:
        raise VolumeError(f"ImageOrientationPatient {ref.orientation.tolist()} is not two orthonormal vectors",
                          "orientation")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    # -- rows / columns / pixel spacing -----------------------------------------------------------
    dims = {(f.rows, f.columns) for f in frames}
    if len(dims) > 1:
        raise VolumeError(f"inconsistent image size: {sorted(dims)} (rows, columns)", "dimensions")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.any(spacings <= 0):
        raise VolumeError("PixelSpacing must be positive", "pixel_spacing")
    if np.any(np.abs(spacings - spacings[0]) > 1e-4 * np.maximum(1.0, spacings[0])):
        uniq = sorted({tuple(np.round(s, 5)) for s in spacings})
        raise VolumeError(f"inconsistent PixelSpacing: {uniq[:4]}", "pixel_spacing")
    # -- sort along the normal --------------------------------------------------------------------
    for f in frames:
        f.s = float(f.position @ normal)
    frames.sort(key=lambda f: f.s)
    n = len(frames)
    if n == 1:
        thick = frames[0].thickness
        return normal, float(thick) if thick and thick > 0 else 1.0
    s = np.array([f.s for f in frames])
    gaps = np.diff(s)
    tol_dup = max(spacing_abs_tol, 1e-3)
    dup = np.nonzero(gaps <= tol_dup)[0]
    if dup.size:
        a, b = frames[dup[0]], frames[dup[0] + 1]
        raise VolumeError(
            f"{dup.size} duplicate slice position(s): e.g. {_name(a)} and {_name(b)} both at "
            f"{a.s:.3f} mm along the normal", "duplicate")
    step = float(np.median(gaps))
    tol = max(spacing_abs_tol, spacing_rel_tol * step)
    bad = np.nonzero(np.abs(gaps - step) > tol)[0]
    if bad.size:
        ratios = gaps[bad] / step
        multiple = np.abs(ratios - np.round(ratios)) * step <= tol
        if np.all(multiple & (np.round(ratios) >= 2)):
            missing = int(np.sum(np.round(ratios) - 1))
            i = int(bad[0])
            raise VolumeError(
                f"{missing} missing slice(s): gap of {gaps[i]:.3f} mm between {_name(frames[i])} and "
                f"{_name(frames[i + 1])} where the spacing is {step:.3f} mm", "missing_slice")
        i = int(bad[np.argmax(np.abs(gaps[bad] - step))])
        raise VolumeError(
            f"non-uniform slice spacing: {gaps.min():.3f}..{gaps.max():.3f} mm (median {step:.3f} mm, "
            f"tolerance {tol:.3f} mm), e.g. {gaps[i]:.3f} mm after {_name(frames[i])}", "spacing")
    # -- stacked along the normal (no gantry tilt / shear) -----------------------------------------
    p0 = frames[0].position
    offsets = np.stack([f.position - p0 for f in frames])
    inplane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(inplane, axis=1)))
    allowed = inplane_tol_fraction * float(np.min(spacings[0]))
    if drift > allowed:
        total_along = float(s[-1] - s[0])
        end_inplane = float(np.linalg.norm(inplane[-1]))
        angle = float(np.degrees(np.arctan2(end_inplane, total_along))) if total_along > 0 else 0.0
        tilts = {str(h.get("GantryDetectorTilt")) for h in headers if h.get("GantryDetectorTilt") not in (None, "")}
        tilt_txt = f", GantryDetectorTilt={'/'.join(sorted(tilts))}" if tilts else ""
        raise VolumeError(
            f"slices are not stacked along the slice normal (gantry tilt or shear): in-plane shift up to "
            f"{drift:.2f} mm, about {angle:.1f} degrees{tilt_txt}; tilted series are rejected "
            f"(resampling is not implemented)", "tilt")
    return normal, step


def _name(f: _Frame) -> str:
    base = os.path.basename(f.path)
    return f"{base} frame {f.frame_number}" if f.frame_number is not None else base


def assemble_volume(
    paths: Iterable[str | os.PathLike],
    *,
    padding_hu: float = -1024.0,
    orientation_tol: float = 1e-3,
    spacing_rel_tol: float = 0.01,
    spacing_abs_tol: float = 0.01,
    inplane_tol_fraction: float = 0.25,
    series_instance_uid: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    budget: Callable[[tuple[int, int, int], tuple[float, float, float]], None] | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> Volume:
    """Read the files of ONE series and return its :class:`Volume` (int16 or float32 HU, (z, y, x)).

    ``paths``: the series' files (any order; the same instance given twice is used once).
    ``padding_hu``: HU written where PixelPaddingValue (range) marks padding.
    Tolerances: ImageOrientationPatient components (absolute); slice spacing
    (max(abs, rel * median spacing)); in-plane drift of slice origins (fraction of the smallest
    pixel spacing) before the stack counts as tilted.
    ``series_instance_uid``: when given, files of other series raise instead of being mixed in.
    ``max_voxels``: slices x Rows x Columns allowed (checked before any allocation or decoding).
    ``budget``: called with the (slices, rows, columns) shape and spacing before anything is
    decoded (the memory guard, dsm_node.infer.memory); what it raises propagates.
    ``spill_dir``: decode into a file-backed array in this folder (model/spill.py) instead of
    memory: the HU are paged in where a stage reads them, and stages release them after use.
    Raises :class:`VolumeError` with a reason.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise VolumeError("no files given", "no_files")
    notes: list[str] = []
    headers: list[Dataset] = []
    frames: list[_Frame] = []
    seen: dict[tuple[str, int | None], str] = {}
    for path in paths:
        ds = _read_header(path)
        idx = len(headers)
        new = _frames_of(ds, idx, path, notes)
        keep = []
        for f in new:
            key = (f.sop_instance_uid, f.frame_number)
            if f.sop_instance_uid and key in seen:
                continue
            seen[key] = path
            keep.append(f)
        if not keep:
            first_path = seen[(new[0].sop_instance_uid, new[0].frame_number)]
            notes.append(f"{os.path.basename(path)}: same SOP Instance as {os.path.basename(first_path)}, ignored")
            continue
        headers.append(ds)
        frames.extend(keep)

    # -- one series, one frame of reference, single-frame xor one multi-frame ------------------------
    series = {str(h.get("SeriesInstanceUID", "") or "") for h in headers}
    if series_instance_uid is not None and series != {series_instance_uid}:
        raise VolumeError(f"files of series {sorted(series - {series_instance_uid})} given for series "
                          f"{series_instance_uid}", "mixed_series")
    if len(series) > 1:
        raise VolumeError(f"files from {len(series)} series: {sorted(series)}", "mixed_series")
    studies = {str(h.get("StudyInstanceUID", "") or "") for h in headers}
    if len(studies) > 1:
        raise VolumeError(f"files from {len(studies)} studies", "mixed_series")
    fors = {str(h.get("FrameOfReferenceUID", "") or "") for h in headers}
    if len(fors) > 1:
        raise VolumeError(f"{len(fors)} different FrameOfReferenceUIDs in one series", "mixed_series")
    multi = [h for h in headers
             if "PerFrameFunctionalGroupsSequence" in h or "SharedFunctionalGroupsSequence" in h]
    if multi and (len(multi) > 1 or len(headers) > 1):
        raise VolumeError(f"{len(multi)} multi-frame instance(s) mixed with {len(headers) - len(multi)} other "
                          f"instance(s): one Enhanced CT instance per series is supported", "multiframe")

    normal, step = _check_geometry(frames, orientation_tol=orientation_tol, spacing_rel_tol=spacing_rel_tol,
                                   spacing_abs_tol=spacing_abs_tol, inplane_tol_fraction=inplane_tol_fraction,
                                   headers=headers)
    ref = frames[0]
    row_cos = ref.orientation[:3] / np.linalg.norm(ref.orientation[:3])
    col_cos = ref.orientation[3:] / np.linalg.norm(ref.orientation[3:])
    affine = affine_from_dicom(ref.position, row_cos, col_cos, ref.pixel_spacing, normal * step)

    # -- pixels: bound, preallocate, decode one slice / frame at a time ----------------------------
    n, rows, cols = len(frames), ref.rows, ref.columns
    if n * rows * cols > max_voxels:
        raise VolumeError(
            f"{n} slices of {rows} x {cols} pixels: {n * rows * cols} voxels exceed the limit of {max_voxels} "
            f"(inference.max_voxels)", "too_large")
    if budget is not None:
        budget((n, rows, cols), (float(step), float(ref.pixel_spacing[0]), float(ref.pixel_spacing[1])))
    for f in {f.header_index: f for f in frames}.values():
        _check_codestreams(f.path, headers[f.header_index], rows, cols)
    integer = _integer_rescale(frames, padding_hu)
    try:
        hu = _decode(frames, headers, multi, (n, rows, cols), np.int16 if integer else np.float32, padding_hu,
                     spill_dir)
    except _NotInt16:  # a value outside int16 (e.g. 16-bit unsigned with an intercept): float32
        hu = _decode(frames, headers, multi, (n, rows, cols), np.float32, padding_hu, spill_dir)
    ordered_headers = headers if multi else [headers[f.header_index] for f in frames]

    thicknesses = {f.thickness for f in frames if f.thickness}
    h0 = ordered_headers[0]
    volume = Volume(
        hu=hu,
        affine_lps=affine,
        spacing=(float(step), float(ref.pixel_spacing[0]), float(ref.pixel_spacing[1])),
        frames=tuple(SourceFrame(f.sop_class_uid, f.sop_instance_uid, f.frame_number, f.path) for f in frames),
        study_instance_uid=str(h0.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(h0.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(h0.get("FrameOfReferenceUID", "") or ""),
        headers=ordered_headers,
        slice_thickness=thicknesses.pop() if len(thicknesses) == 1 else None,
        notes=notes,
    )
    for note in notes:
        log.info("volume assembly: %s", note)
    return volume


class _NotInt16(Exception):
    """A slice has HU outside the int16 range: the volume is decoded again as float32."""


def _integer_rescale(frames: list[_Frame], padding_hu: float) -> bool:
    """Whether every HU is an integer: integer slope, intercept and padding, no LUT sequence."""
    if not float(padding_hu).is_integer() or not -32768 <= padding_hu <= 32767:
        return False
    return all(not f.use_modality_lut_sequence and float(f.slope).is_integer() and float(f.intercept).is_integer()
               for f in frames)


def _decode(frames: list[_Frame], headers: list[Dataset], multi: list, shape: tuple[int, int, int], dtype,
            padding_hu: float, spill_dir: str | os.PathLike | None = None) -> np.ndarray:
    hu = np.empty(shape, dtype=dtype) if spill_dir is None else file_backed(shape, dtype, spill_dir)
    if multi:
        _decode_multiframe(frames, headers[0], hu, padding_hu)
    else:
        # file-backed: the decoded slices leave the resident set every ~64 MB written
        every = max(1, (64 << 20) // max(1, hu[0].nbytes))
        for k, f in enumerate(frames):
            _decode_single(f, headers[f.header_index], hu[k], padding_hu)
            if (k + 1) % every == 0:
                release(hu)
    release(hu)
    return hu


def _to_hu(raw: np.ndarray, out: np.ndarray, slope: float, intercept: float,
           padding: tuple[int, int] | None, padding_hu: float, lut_ds: Dataset | None = None) -> None:
    if out.dtype == np.int16:
        # Integer rescale (see _integer_rescale): exact in int32, one slice at a time.
        values = raw.astype(np.int32) * int(slope) + int(intercept)
        if values.size and (values.min() < -32768 or values.max() > 32767):
            raise _NotInt16
        out[...] = values
    elif lut_ds is not None:
        from pydicom.pixels import apply_modality_lut

        out[...] = apply_modality_lut(raw, lut_ds)
    else:
        np.multiply(raw, np.float32(slope), out=out, casting="unsafe")
        if intercept:
            out += np.float32(intercept)
    if padding is not None:
        lo, hi = padding
        mask = (raw == lo) if lo == hi else ((raw >= lo) & (raw <= hi))
        out[mask] = padding_hu


def _codestream_size(frame: bytes, ts: str) -> tuple[int, int] | None:
    """(rows, columns) a JPEG 2000 / JPEG / JPEG-LS frame declares itself, None if not found."""
    from pydicom.pixels.utils import _get_jpg_parameters
    from pydicom.uid import JPEG2000TransferSyntaxes

    if ts in JPEG2000TransferSyntaxes:
        start = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ (after a JP2 header, if any)
        if start < 0 or len(frame) < start + 28:
            return None
        xsiz, ysiz, xosiz, yosiz = (int.from_bytes(frame[start + o : start + o + 4], "big") for o in (8, 12, 16, 20))
        return ysiz - yosiz, xsiz - xosiz
    info = _get_jpg_parameters(frame)
    if "height" in info and "width" in info:
        return int(info["height"]), int(info["width"])
    return None


def _check_codestreams(path: str, header: Dataset, rows: int, cols: int) -> None:
    """Refuse compressed frames whose codestream declares another size than Rows x Columns."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if ts not in (*JPEG2000TransferSyntaxes, *JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes):
        return  # native (pydicom checks the length against Rows x Columns) or RLE (decoded to it)
    try:
        ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData", "NumberOfFrames"])
        frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
        for index, frame in enumerate(frames, 1):
            size = _codestream_size(frame, str(ts))
            if size is not None and size != (rows, cols):
                raise VolumeError(
                    f"{os.path.basename(path)}: frame {index} codestream is {size[0]} x {size[1]} pixels, "
                    f"the header says {rows} x {cols}", "decode")
    except VolumeError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed encapsulation: the decoder would fail too
        raise VolumeError(f"{os.path.basename(path)}: encapsulated pixel data not readable: {exc}", "decode") from None


def _decode_single(f: _Frame, header: Dataset, out: np.ndarray, padding_hu: float) -> None:
    from pydicom.pixels import pixel_array

    try:
        raw = pixel_array(f.path)
    except Exception as exc:  # decoder plugins raise many types
        ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "?")
        raise VolumeError(f"{os.path.basename(f.path)}: pixel data not decodable (transfer syntax {ts}): {exc}",
                          "decode") from None
    if raw.shape != out.shape:
        raise VolumeError(f"{os.path.basename(f.path)}: decoded shape {raw.shape} != {out.shape}", "decode")
    _to_hu(raw, out, f.slope, f.intercept, _padding_range(header), padding_hu,
           header if f.use_modality_lut_sequence else None)


def _decode_multiframe(frames: list[_Frame], header: Dataset, hu: np.ndarray, padding_hu: float) -> None:
    from pydicom.pixels import iter_pixels

    slot = {f.frame_number: k for k, f in enumerate(frames)}
    padding = _padding_range(header)
    path = frames[0].path
    done = 0
    try:
        for index, raw in enumerate(iter_pixels(path)):
            k = slot.get(index + 1)
            if k is None:
                raise VolumeError(f"{os.path.basename(path)}: more frames than NumberOfFrames", "decode")
            if raw.shape != hu.shape[1:]:
                raise VolumeError(f"{os.path.basename(path)}: frame {index + 1} shape {raw.shape}", "decode")
            f = frames[k]
            _to_hu(raw, hu[k], f.slope, f.intercept, padding, padding_hu)
            done += 1
    except (VolumeError, _NotInt16):
        raise
    except Exception as exc:
        raise VolumeError(f"{os.path.basename(path)}: pixel data not decodable: {exc}", "decode") from None
    if done != len(frames):
        raise VolumeError(f"{os.path.basename(path)}: decoded {done} of {len(frames)} frames", "decode")


# ----------------------------------------------------------------------------------------------
def find_series(directory: str | os.PathLike) -> dict[str, list[str]]:
    """DICOM image files under ``directory`` (recursive), grouped by SeriesInstanceUID.

    Non-DICOM files, DICOMDIR and non-image objects (SR, SEG, RTSTRUCT ...) are skipped.
    """
    groups: dict[str, list[str]] = {}
    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.upper() == "DICOMDIR":
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=["SeriesInstanceUID", "Rows", "Modality", "SOPClassUID"])
            except Exception:
                continue
            if "Rows" not in ds or str(ds.get("Modality", "")) in ("SEG", "SR", "RTSTRUCT", "PR", "KO"):
                continue
            groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append(path)
    return groups


def files_of(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Expand directories to the files inside them (recursive), keep files as given."""
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(str(q) for q in sorted(p.rglob("*")) if q.is_file())
        else:
            out.append(str(p))
    return out
