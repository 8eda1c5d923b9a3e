"""A synthetic multi-series CT study (tiny images) that exercises every selection rule."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.8.498.77."
PATIENT_NAME = "DOE^JANE"  # must never reach a log line


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
    folder: Path, specs=MIXED_STUDY, study_uid: str | None = None, series_uids: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """Write the study as Part 10 files; return its UID and series UID per spec key.

    Pass ``study_uid`` and ``series_uids`` to add instances to series sent before.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(prefix=ROOT)
    frame_uid = generate_uid(prefix=ROOT)
    series_uids = dict(series_uids or {})
    pixels = (np.arange(16 * 16, dtype=np.int16).reshape(16, 16) - 100).tobytes()
    for number, spec in enumerate(specs, start=1):
        series_uid = series_uids.setdefault(spec.key, generate_uid(prefix=ROOT))
        for i in range(spec.count):
            ds = Dataset()
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid(prefix=ROOT)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, "PID-4711", "ACC1"
            ds.StudyDate, ds.StudyTime, ds.StudyID = "20260301", "080000", "1"
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", number, i + 1
            ds.SeriesDescription = spec.description
            ds.ImageType = list(spec.image_type)
            if spec.contrast:
                ds.ContrastBolusAgent = spec.contrast
            ds.SliceThickness = spec.thickness
            ds.PixelSpacing = [0.8, 0.8]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0, 0, -i * spec.thickness]
            ds.Rows = ds.Columns = 16
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.PixelData = pixels
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(folder / f"{spec.key}-{i:03d}.dcm", enforce_file_format=True)
    return study_uid, series_uids
