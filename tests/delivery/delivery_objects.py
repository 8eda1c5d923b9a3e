"""Small valid result objects to deliver: on a 3-slice synthetic CT (tests.support.ct), a 1-segment DICOM-SEG,
a TID 1500 SR measuring that segment, and an RGB secondary capture.

Built with highdicom (the node's own writers are tested elsewhere); all validate with dciodvfy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tests.support.ct import ct_dataset


@dataclass(frozen=True)
class ResultFile:
    kind: str  # SEG | SR | SC
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str


def synthetic_ct(slices: int = 3, size: int = 16) -> list[Dataset]:
    """The source CT of the results: a flat image per slice, 2 mm apart."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    return [ct_dataset(study_uid=study, series_uid=series, frame_uid=frame, index=i, spacing=2.0, explicit=True,
                       pixel_spacing=(1.0, 1.0), pixels=np.full((size, size), 1000 + i, np.uint16))
            for i in range(slices)]


def build_results(folder: Path) -> dict[str, ResultFile]:
    """SEG, SR and SC files for one synthetic study, written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = synthetic_ct()
    mask = np.zeros((len(ct), ct[0].Rows, ct[0].Columns), dtype=bool)
    mask[:, 4:12, 4:12] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver",
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="dsm-test", version="0", family=codes.DCM.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=generate_uid(), series_number=9901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="dsm-node",
        manufacturer_model_name="dsm-test", software_versions="0", device_serial_number="1",
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="dsm-test"),
    )
    volume = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Liver"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(ct[0].SeriesInstanceUID),
        ),
        finding_type=codes.SCT.Liver,
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=192.0, unit=codes.UCUM.CubicMillimeter)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[volume],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=generate_uid(), series_number=9902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="dsm-node",
    )
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ct[0], pixel_array=np.zeros((16, 16, 3), np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(), series_number=9903, instance_number=1, manufacturer="dsm-node",
        pixel_spacing=[1.0, 1.0], patient_orientation=["L", "P"],
    )
    sc.Laterality = ""  # type 2C in General Series; dciodvfy wants it present
    out = {}
    for kind, ds in (("SEG", seg), ("SR", sr), ("SC", sc)):
        path = folder / f"{kind.lower()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[kind] = ResultFile(kind, path, ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)
    return out


def copy_as_new_instance(source: ResultFile, folder: Path) -> ResultFile:
    """The same object under a fresh SOP Instance UID (many distinct results for load tests)."""
    ds = pydicom.dcmread(source.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"{source.kind.lower()}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ResultFile(source.kind, path, source.sop_class_uid, ds.SOPInstanceUID, source.series_uid, source.study_uid)
