"""Synthetic CT DICOM for the tests (no real patient data): one header, several shapes of series.

``ct_dataset()`` builds ONE single-frame CT Image Storage data set with a complete header
(patient, study, series, frame of reference, equipment, image plane and pixel modules); every
writer below goes through it, so a fix to the header reaches every suite:

* ``write_ct_series(folder, n, size)``: one series of a smooth phantom slice (or incompressible
  noise), for the receive / pipeline / reliability / serve tests;
* ``phantom()`` + ``write_series(folder, hu, ...)``: a small labelled abdomen volume written with
  full control over geometry (spacing, orientation, slice step / tilt), pixel encoding
  (signed/unsigned, rescale, padding) and transfer syntax, for the volume and result tests;
  ``write_enhanced()`` converts such a series to one Legacy Converted Enhanced CT instance and
  ``repair_uids()`` copies a series with empty UIDs, filling them in;
* ``SeriesSpec`` + ``write_study()``: a multi-series study that exercises every selection rule.

Tests that need odd tags, broken files or other transfer syntaxes change the data sets or files
these return (small local modifiers), rather than growing another writer.
Realistic anatomy comes from the production phantom generator instead
(``training.phantom.writers.write_dicom_series``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

# Obviously synthetic identity; tests assert that neither ever reaches a log line or the index.
PATIENT_NAME = "Synthetic^Phantom"
PATIENT_ID = "SYN-PHANTOM-0001"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# Catalog indices used by phantom() (config/classes.yaml order).
SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, LIVER, LIVER_TUMOR, KIDNEY_CYST = 1, 2, 3, 6, 31, 28


def _phantom_slice(size: int, index: int) -> np.ndarray:
    """A soft-tissue ellipse with a brighter disc whose value changes a little per slice."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    body = ((xx - c) / (0.45 * size)) ** 2 + ((yy - c) / (0.35 * size)) ** 2 <= 1
    organ = ((xx - c * 1.2) ** 2 + (yy - c) ** 2) <= (0.12 * size) ** 2
    pixels = np.full((size, size), -1000, dtype=np.int16)
    pixels[body] = 40
    pixels[organ] = 120 + (index % 7)
    return pixels


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    index: int = 0,
    size: int = 64,
    spacing: float = 2.5,
    pixels: np.ndarray | None = None,
    series_description: str = "Synthetic abdomen venous 2.5mm",
    sop_instance_uid: str | None = None,
    explicit: bool = False,
    pixel_spacing: Sequence[float] = (0.8, 0.8),
    position: Sequence[float] | None = None,
    orientation: Sequence[float] = AXIAL,
    series_number: int = 2,
    instance_number: int | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    contrast: str | None = "Synthetic contrast",
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Dataset:
    """Slice ``index`` of a CT series (Part 10 file meta included, uncompressed).

    ``pixels`` (rows, columns), int16 or uint16 stored values, default the phantom slice of
    ``size``; ``position`` defaults to a centred grid ``index * spacing`` mm along the slice
    normal; ``spacing`` is also the slice thickness; ``contrast=None`` leaves out
    ContrastBolusAgent (a non-contrast series).
    """
    uid = sop_instance_uid or generate_uid()
    if pixels is None:
        pixels = _phantom_slice(size, index)
    rows, cols = pixels.shape
    row_cos, col_cos = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    if position is None:
        position = (-(cols / 2) * pixel_spacing[1], -(rows / 2) * pixel_spacing[0], 0.0) + index * spacing * normal
    position = np.asarray(position, float)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "SYN0001"
    ds.Modality = "CT"
    ds.Manufacturer = "dsm-node synthetic"
    ds.ManufacturerModelName = "tests.support.ct"
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StudyDescription = "Synthetic CT abdomen"
    ds.SeriesDescription = series_description
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    if contrast:
        ds.ContrastBolusAgent = contrast
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = f"{spacing:g}"
    ds.KVP = 120
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1 if instance_number is None else instance_number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(position @ normal):.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    signed = np.issubdtype(pixels.dtype, np.signedinteger)
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16 if signed else np.uint16).tobytes()
    return ds


@dataclass
class SyntheticSeries:
    study_uid: str
    series_uid: str
    files: list[Path]
    sop_instance_uids: list[str]


def write_ct_series(folder: str | Path, n: int = 10, size: int = 64, *, study_uid: str | None = None,
                    series_uid: str | None = None, spacing: float = 2.5, explicit: bool = False,
                    noise: bool = False, noise_range: tuple[int, int] = (-1000, 1500), seed: int = 0,
                    **header) -> SyntheticSeries:
    """Write ``n`` CT instances of one series into ``folder``; return their UIDs and paths.

    ``noise`` fills the images with random values in ``noise_range`` (incompressible, like real
    CT for transfer tests) instead of the smooth phantom; ``header``: more ``ct_dataset`` options.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    files, uids = [], []
    for i in range(n):
        pixels = rng.integers(*noise_range, (size, size), dtype=np.int16) if noise else None
        ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, index=i, size=size,
                        spacing=spacing, pixels=pixels, explicit=explicit, **header)
        path = out / f"ct_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return SyntheticSeries(study_uid, series_uid, files, uids)


# --------------------------------------------------------------------------------------------
# a labelled volume with full control over geometry and encoding


def phantom(shape=(14, 40, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hu int16, labels uint8), both (z, y, x). Patient right = low x (column) index."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    zc, yc, xc = (s / 2 for s in shape)
    hu = np.full(shape, -1000, dtype=np.int16)
    body = ((y - yc) / (0.45 * shape[1])) ** 2 + ((x - xc) / (0.47 * shape[2])) ** 2 <= 1
    hu[body] = 30
    labels = np.zeros(shape, dtype=np.uint8)

    def ell(cz, cy, cx, rz, ry, rx):
        return ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1

    liver = ell(zc + 1, yc - 3, xc - 0.22 * shape[2], 0.35 * shape[0], 0.25 * shape[1], 0.2 * shape[2])
    spleen = ell(zc + 2, yc, xc + 0.3 * shape[2], 0.2 * shape[0], 0.15 * shape[1], 0.08 * shape[2])
    rk = ell(zc - 2, yc + 0.25 * shape[1], xc - 0.2 * shape[2], 0.2 * shape[0], 0.1 * shape[1], 0.07 * shape[2])
    lk = ell(zc - 2, yc + 0.25 * shape[1], xc + 0.2 * shape[2], 0.2 * shape[0], 0.1 * shape[1], 0.07 * shape[2])
    tumor = ell(zc + 1, yc - 4, xc - 0.25 * shape[2], 1.6, 3.5, 2.5)
    cyst = ell(zc - 2, yc + 0.25 * shape[1] - 1, xc + 0.2 * shape[2], 1.0, 1.5, 1.5)
    for mask, value, mean in ((liver, LIVER, 60), (spleen, SPLEEN, 50), (rk, RIGHT_KIDNEY, 150),
                              (lk, LEFT_KIDNEY, 150), (tumor & liver, LIVER_TUMOR, 20), (cyst & lk, KIDNEY_CYST, 5)):
        labels[mask] = value
        hu[mask] = mean
    hu = (hu + rng.integers(-8, 9, size=shape)).astype(np.int16)
    return hu, labels


def write_series(
    out_dir,
    hu: np.ndarray,
    *,
    spacing=(2.5, 0.75, 0.8),  # (slice, row, column) mm
    origin=(-20.0, -15.0, 40.0),
    row_cos=(1.0, 0.0, 0.0),
    col_cos=(0.0, 1.0, 0.0),
    slice_step=None,  # mm vector between consecutive slices; default normal * spacing[0]
    signed: bool = False,
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding_value: int | None = None,
    padding_mask: np.ndarray | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    for_uid: str | None = None,
    gantry_tilt: float | None = None,
    instance_numbers: str = "reversed",  # deliberately NOT the geometric order
    names: str = "slice_{k:03d}.dcm",
) -> list[Path]:
    """Write ``hu`` ((z, y, x)) as one CT series; slice k at origin + k * slice_step."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    row_cos = np.asarray(row_cos, float)
    col_cos = np.asarray(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    step = np.asarray(slice_step, float) if slice_step is not None else normal * spacing[0]
    n = hu.shape[0]
    paths = []
    for k in range(n):
        stored = np.rint((hu[k].astype(np.float64) - intercept) / slope)
        stored = (np.clip(stored, -32768, 32767).astype(np.int16) if signed
                  else np.clip(stored, 0, 65535).astype(np.uint16))
        if padding_value is not None and padding_mask is not None:
            stored[padding_mask[k]] = padding_value
        ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, frame_uid=for_uid, index=k, pixels=stored,
                        spacing=spacing[0], pixel_spacing=spacing[1:], position=np.asarray(origin, float) + k * step,
                        orientation=(*row_cos, *col_cos), explicit=True, slope=slope, intercept=intercept,
                        instance_number=(n - k) if instance_numbers == "reversed" else (k + 1))
        # General Series type 2C for CT (dciodvfy checks the result objects made from these);
        # not in ct_dataset, whose header the receive tests check for keys starting "Patient".
        ds.PatientPosition = "HFS"
        if gantry_tilt is not None:
            ds.GantryDetectorTilt = f"{gantry_tilt:g}"
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value)
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, stored)
        path = out_dir / names.format(k=k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(out_path, single_frame_paths, *, shuffle_seed: int | None = 3) -> Path:
    """Convert a single-frame series to ONE Legacy Converted Enhanced CT instance (highdicom)."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = [pydicom.dcmread(p) for p in single_frame_paths]
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(datasets)
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(),
        series_number=40,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(out_path, enforce_file_format=True)
    return Path(out_path)


def repair_uids(src_dir, dst_dir) -> list[Path]:
    """Copy a series whose SOP/Study/Series UIDs are empty, filling them in (one new study)."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for name in sorted(os.listdir(src_dir)):
        ds = pydicom.dcmread(Path(src_dir) / name)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID or CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID or generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        if not ds.get("PatientID"):
            ds.PatientID = "REPAIRED"
        if not ds.get("SeriesNumber"):
            ds.SeriesNumber = 1
        path = dst_dir / name
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


# --------------------------------------------------------------------------------------------
# a multi-series study for the selection rules


@dataclass(frozen=True)
class SeriesSpec:
    key: str
    description: str
    count: int
    thickness: float
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    contrast: str | None = None


MIXED_STUDY = (
    SeriesSpec("localizer", "TOPOGRAM", 2, 1.0, ("ORIGINAL", "PRIMARY", "LOCALIZER")),
    SeriesSpec("thick", "ABD 7.5 STD", 24, 7.5),
    SeriesSpec("plain", "ABD NON-CONTRAST 2.0", 30, 2.0),
    SeriesSpec("venous", "ABD PORTAL VENOUS 2.0", 30, 2.0, contrast="IOHEXOL"),
    SeriesSpec("derived", "ABD MPR", 30, 1.0, ("DERIVED", "SECONDARY", "AXIAL"), contrast="IOHEXOL"),
)


def write_study(
    folder: Path, specs: Sequence[SeriesSpec] = MIXED_STUDY, study_uid: str | None = None,
    series_uids: dict[str, str] | None = None, size: int = 16,
) -> tuple[str, dict[str, str]]:
    """Write the study as Part 10 files; return its UID and series UID per spec key.

    Pass ``study_uid`` and ``series_uids`` to add instances to series sent before.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    series_uids = dict(series_uids or {})
    for number, spec in enumerate(specs, start=1):
        series_uid = series_uids.setdefault(spec.key, generate_uid())
        for i in range(spec.count):
            ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, index=i, size=size,
                            spacing=spec.thickness, series_description=spec.description, series_number=number,
                            image_type=spec.image_type, contrast=spec.contrast, explicit=True)
            ds.save_as(folder / f"{spec.key}-{i:03d}.dcm", enforce_file_format=True)
    return study_uid, series_uids
