"""Small synthetic CT series for the volume and result tests (no ../shared needed).

``phantom()`` makes a (z, y, x) HU volume and a label map of a few catalog classes;
``write_series()`` writes it as single-frame CT Image Storage files with full control over the
geometry (spacing, orientation, slice step / tilt), pixel encoding (signed/unsigned, rescale,
padding) and transfer syntax; ``write_enhanced()`` converts such a series to one (Legacy
Converted) Enhanced CT instance with highdicom.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Catalog indices used by the phantom (config/classes.yaml order).
SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, LIVER, LIVER_TUMOR, KIDNEY_CYST = 1, 2, 3, 6, 31, 28


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
    tumour = ell(zc + 1, yc - 4, xc - 0.25 * shape[2], 1.6, 3.5, 2.5)
    cyst = ell(zc - 2, yc + 0.25 * shape[1] - 1, xc + 0.2 * shape[2], 1.0, 1.5, 1.5)
    for mask, value, mean in ((liver, LIVER, 60), (spleen, SPLEEN, 50), (rk, RIGHT_KIDNEY, 150),
                              (lk, LEFT_KIDNEY, 150), (tumour & liver, LIVER_TUMOR, 20), (cyst & lk, KIDNEY_CYST, 5)):
        labels[mask] = value
        hu[mask] = mean
    hu = (hu + rng.integers(-8, 9, size=shape)).astype(np.int16)
    return hu, labels


def _base_dataset(study_uid, series_uid, for_uid, sop_uid, rows, cols) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetic"
    ds.ManufacturerModelName = "ctsynth"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "synthetic abdomen"
    ds.SeriesDescription = "synthetic CT"
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


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
    n, rows, cols = hu.shape
    paths = []
    for k in range(n):
        ds = _base_dataset(study_uid, series_uid, for_uid, generate_uid(), rows, cols)
        ds.InstanceNumber = (n - k) if instance_numbers == "reversed" else (k + 1)
        pos = np.asarray(origin, float) + k * step
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.SliceLocation = f"{float(pos @ normal):.4f}"
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        if gantry_tilt is not None:
            ds.GantryDetectorTilt = f"{gantry_tilt:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        stored = np.rint((hu[k].astype(np.float64) - intercept) / slope)
        if signed:
            ds.PixelRepresentation = 1
            stored = np.clip(stored, -32768, 32767).astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            stored = np.clip(stored, 0, 65535).astype(np.uint16)
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value)
            if padding_mask is not None:
                stored[padding_mask[k]] = padding_value
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
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
