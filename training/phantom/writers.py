"""Writers for phantom volumes: NIfTI image/label pairs and CT Image Storage DICOM series.

pydicom and nibabel are imported inside the functions: importing the generator stays cheap.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np


def write_nifti_pair(image: np.ndarray, label: np.ndarray, affine: np.ndarray, image_path: Path | str,
                     label_path: Path | str) -> None:
    """Image as int16 HU, label as uint8, both with the same affine (qform and sform)."""
    import nibabel as nib

    for arr, path, dtype in ((np.rint(image), image_path, np.int16), (label, label_path, np.uint8)):
        img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))


def write_dicom_series(
    image: np.ndarray,
    affine: np.ndarray,
    out_dir: Path | str,
    patient_name: str = "PHANTOM^001",
    patient_id: str = "PHANTOM001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "Synthetic abdominal CT phantom",
    series_number: int = 1,
    accession_number: str = "",
    study_date: str | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a HU volume as a CT Image Storage series, one file per slice along array axis 2.

    The array axes must be (column, row, slice): array[i, j, k] becomes pixel (row j, column i)
    of slice k, and the affine (voxel -> RAS mm) gives orientation, spacing and positions.
    uid_seed makes the UIDs a deterministic function of that string (pydicom generate_uid
    entropy); otherwise they are random. Returns the file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if image.ndim != 3:
        raise ValueError("image must be 3-D (columns, rows, slices)")

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, tag]) if uid_seed is not None else generate_uid()

    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid("series")
    for_uid = frame_of_reference_uid or uid("for")

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dx, dy, dz = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    row_dir, col_dir = col_step / dx, row_step / dy  # DICOM "row direction" runs along a row
    normal = np.cross(row_dir, col_dir)
    if abs(abs(float(np.dot(normal, slice_step / dz))) - 1) > 1e-3:
        raise ValueError("slices must be stacked along the slice normal (no gantry tilt)")

    now = _dt.datetime.now()
    date = study_date or now.strftime("%Y%m%d")
    time = now.strftime("%H%M%S")
    stored = np.clip(np.rint(image) + 1024, 0, 4095).astype(np.uint16)
    paths = []
    for k in range(image.shape[2]):
        sop_uid = uid(f"sop{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
        ds.AccessionNumber = accession_number
        ds.Modality = "CT"
        ds.Manufacturer = "dsm-node phantom generator"
        ds.InstitutionName = "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic abdomen"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = f"{dz:.6g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = lps[:3, 3] + k * slice_step
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(image.shape[1]), int(image.shape[0])
        ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]  # row spacing, then column spacing
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / f"CT{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
