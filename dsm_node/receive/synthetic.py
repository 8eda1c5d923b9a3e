"""Synthetic CT series for tests, benchmarks and demos (no real patient data).

``write_ct_series(folder, n)`` writes ``n`` single-frame CT Image Storage files of one series
(uncompressed, 16-bit, ``size`` x ``size``) with consistent geometry: a soft-tissue ellipse with
a brighter disc, slices 2.5 mm apart along +z. Patient attributes are obviously synthetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

SYNTHETIC_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root (generate_uid default)


@dataclass
class SyntheticSeries:
    study_uid: str
    series_uid: str
    files: list[Path]
    sop_instance_uids: list[str]


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    index: int,
    size: int = 64,
    spacing: float = 2.5,
    pixels: np.ndarray | None = None,
    series_description: str = "Synthetic abdomen venous 2.5mm",
    sop_instance_uid: str | None = None,
    explicit: bool = False,
) -> Dataset:
    uid = sop_instance_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "SYN0001"
    ds.Modality = "CT"
    ds.Manufacturer = "dsm-node synthetic"
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StudyDescription = "Synthetic CT abdomen"
    ds.SeriesDescription = series_description
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN-PHANTOM-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.ContrastBolusAgent = "Synthetic contrast"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = spacing
    ds.KVP = 120
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-(size / 2) * 0.8, -(size / 2) * 0.8, index * spacing]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = index * spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.PixelSpacing = [0.8, 0.8]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if pixels is None:
        yy, xx = np.mgrid[:size, :size]
        c = (size - 1) / 2
        body = ((xx - c) / (0.45 * size)) ** 2 + ((yy - c) / (0.35 * size)) ** 2 <= 1
        organ = ((xx - c * 1.2) ** 2 + (yy - c) ** 2) <= (0.12 * size) ** 2
        pixels = np.full((size, size), -1000, dtype=np.int16)
        pixels[body] = 40
        pixels[organ] = 120 + (index % 7)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


def write_ct_series(folder: str | Path, n: int = 10, size: int = 64, *, study_uid: str | None = None,
                    series_uid: str | None = None, spacing: float = 2.5, explicit: bool = False,
                    noise: bool = False, seed: int = 0) -> SyntheticSeries:
    """Write ``n`` CT instances of one series into ``folder``; return their UIDs and paths.

    ``noise`` fills the image with random values (incompressible, like real CT for transfer
    benchmarks) instead of the smooth phantom.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    files, uids = [], []
    for i in range(n):
        pixels = rng.integers(-1000, 1500, (size, size), dtype=np.int16) if noise else None
        ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, index=i, size=size,
                        spacing=spacing, pixels=pixels, explicit=explicit)
        path = out / f"ct_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return SyntheticSeries(study_uid, series_uid, files, uids)
