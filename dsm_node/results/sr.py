"""TID 1500 "Imaging Measurement Report" as a Comprehensive 3D SR (highdicom).

* observer = the node as a device (TID 1004: Device Observer UID, name, manufacturer, model);
* one TID 1411 volumetric measurement group per segment of the SEG: tracking identifier + UID
  (the segment's Tracking UID), referenced segment (SEG SOP Instance + segment number, source
  series), finding category/type (the segment's category/type), finding site (organ + laterality;
  for tumours the parent organ), algorithm identification, and measurements:
  volume (SCT 118565006, cm3), mean attenuation (DCM 112031 "Attenuation Coefficient" with
  derivation SCT 373098007 Mean, [hnsf'U]) and, for tumours, the longest 3-D diameter
  (SCT 81827009 "Diameter" with derivation SCT 56851009 Maximum, mm);
* no findings: no SEG, and a report whose "Qualitative Evaluations" container (TID 1500 row 10)
  says Finding = SCT 260413007 "None" plus a text comment.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    ReferencedSegment,
    RelationshipTypeValues,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from . import coding
from .measurements import LabelMeasurement, measure_labels
from .options import ResultOptions
from .seg import ResultError, SegResult, character_set, check_source, quiet_source_warnings, save, tracking_identifier

QUALITATIVE_EVALUATIONS = coding.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = coding.CodedConcept.from_code(codes.DCM.Comment)


@dataclass
class SRResult:
    dataset: Comprehensive3DSR
    measurements: dict[int, LabelMeasurement]  # by catalog index
    no_findings: bool
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None


def measure(volume, labels: np.ndarray, catalog) -> dict[int, LabelMeasurement]:
    """Measurements of every catalog class in ``labels``; diameters for tumours only."""
    tumours = {e.index for e in catalog if e.kind == "tumor"}
    return measure_labels(labels, volume.hu, volume.affine_lps, diameter_labels=tumours)


def _observation_context(options: ResultOptions) -> ObservationContext:
    device = DeviceObserverIdentifyingAttributes(
        uid=options.algorithm_device_uid,
        name=f"{options.model_name} {options.model_version}"[:64],
        manufacturer_name=options.manufacturer,
        model_name=options.model_name,
    )
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _algorithm(options: ResultOptions) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=options.model_name, version=str(options.model_version))


def _finding_sites(entry) -> list[FindingSite]:
    c = coding.resolve(entry)
    if entry.kind == "tumor":
        site = c.anatomic_region
        return [FindingSite(site)] if site is not None else []
    sites = [FindingSite(c.type, laterality=c.modifier)]
    if c.anatomic_region is not None:  # e.g. Hepatic Vessel: Blood Vessel, in the Liver
        sites.append(FindingSite(c.anatomic_region))
    return sites


def _group(seg: SegResult, segment, m: LabelMeasurement, options: ResultOptions, source_series: str):
    entry = segment.entry
    c = coding.resolve(entry)
    algo = _algorithm(options)
    measurements = [Measurement(name=coding.VOLUME, value=round(m.volume_cm3, 4), unit=coding.CM3, algorithm_id=algo)]
    if m.mean_hu is not None:
        measurements.append(Measurement(name=coding.ATTENUATION, value=round(m.mean_hu, 2), unit=coding.HU,
                                        derivation=coding.MEAN, algorithm_id=algo))
    if m.max_diameter_mm is not None:
        measurements.append(Measurement(name=coding.DIAMETER, value=round(m.max_diameter_mm, 2), unit=coding.MM,
                                        derivation=coding.MAXIMUM, algorithm_id=algo))
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=segment.tracking_uid, identifier=tracking_identifier(entry, options)),
        referenced_segment=ReferencedSegment(
            sop_class_uid=seg.dataset.SOPClassUID, sop_instance_uid=seg.dataset.SOPInstanceUID,
            segment_number=segment.number, source_series=SourceSeriesForSegmentation(source_series)),
        finding_type=c.type,
        finding_category=c.category,
        finding_sites=_finding_sites(entry),
        algorithm_id=algo,
        measurements=measurements,
    )


def _no_findings_report(options: ResultOptions, n_classes: int) -> MeasurementReport:
    """A TID 1500 report without measurement groups: Qualitative Evaluations = no findings."""
    placeholder = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier="placeholder"),
        qualitative_evaluations=[QualitativeEvaluation(coding.FINDING, coding.NONE)])
    report = MeasurementReport(
        observation_context=_observation_context(options),
        procedure_reported=coding.PROCEDURE_REPORTED,
        imaging_measurements=[placeholder],
        title=codes.DCM.ImagingMeasurementReport,
    )
    root = report[0]
    evaluations = ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS)
    evaluations.ContentSequence = [
        CodeContentItem(name=coding.FINDING, value=coding.NONE, relationship_type=RelationshipTypeValues.CONTAINS),
        TextContentItem(name=COMMENT, relationship_type=RelationshipTypeValues.CONTAINS,
                        value=f"No findings: {options.model_name} {options.model_version} segmented none of the "
                              f"{n_classes} catalog classes in this series."),
    ]
    items = [it for it in root.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue != "126010"]
    root.ContentSequence = [*items, evaluations]  # replaces the "Imaging Measurements" container
    return report


def _reference_stub(ds) -> Dataset:
    """The four UIDs highdicom needs to list an instance as evidence (not the whole SEG)."""
    stub = Dataset()
    for attr in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(stub, attr, getattr(ds, attr))
    return stub


def build_sr(volume, labels: np.ndarray | None, catalog, options: ResultOptions, seg: SegResult | None, *,
             measurements: dict[int, LabelMeasurement] | None = None) -> SRResult:
    """The SR for one processed series. ``seg`` None (or no segments) -> a "no findings" report."""
    t0 = time.perf_counter()
    check_source(volume)
    uids = options.uids(volume.series_instance_uid)
    no_findings = seg is None or not seg.segments
    if not no_findings:
        if measurements is None:
            if labels is None:
                raise ResultError("labels or measurements are needed for the measurement groups")
            measurements = measure(volume, labels, catalog)
        t_measured = time.perf_counter()
        groups = []
        for segment in seg.segments:
            m = measurements.get(segment.label)
            if m is None:
                raise ResultError(f"no measurement for segment {segment.number} ({segment.entry.name})")
            groups.append(_group(seg, segment, m, options, volume.series_instance_uid))
        report = MeasurementReport(
            observation_context=_observation_context(options),
            procedure_reported=coding.PROCEDURE_REPORTED,
            imaging_measurements=groups,
            title=codes.DCM.ImagingMeasurementReport,
        )
        evidence = [*volume.headers, _reference_stub(seg.dataset)]
    else:
        measurements = {}
        t_measured = time.perf_counter()
        report = _no_findings_report(options, len(catalog))
        evidence = list(volume.headers)
    t1 = time.perf_counter()
    with quiet_source_warnings():
        sr = _sr_dataset(volume, evidence, report, uids, options)
    sr.ContributingEquipmentSequence.append(coding.air_contributing_equipment(
        manufacturer=options.manufacturer, model_name=options.model_name,
        software_versions=options.software_versions, device_uid=options.algorithm_device_uid,
        institution_name=options.institution_name,
        description=f"AI measurements by {options.model_name} {options.model_version}"))
    t2 = time.perf_counter()
    return SRResult(sr, measurements, no_findings,
                    timings={"measure_s": t_measured - t0, "content_s": t1 - t_measured, "highdicom_s": t2 - t1})


def _sr_dataset(volume, evidence, report, uids, options: ResultOptions) -> Comprehensive3DSR:
    return Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.sr_series,
        series_number=options.sr_series_number,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=options.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=options.institution_name,
        series_description=options.sr_series_description[:64],
        manufacturer_model_name=options.model_name,
        software_versions=list(options.software_versions),
        device_serial_number=options.device_serial_number,
        specific_character_set=character_set(volume),
    )


def write_sr(volume, labels: np.ndarray | None, catalog, options: ResultOptions, seg: SegResult | None,
             out_dir: str | os.PathLike, *, measurements: dict[int, LabelMeasurement] | None = None) -> SRResult:
    """Build the SR and write it as ``out_dir/SR_<SOPInstanceUID>.dcm``."""
    result = build_sr(volume, labels, catalog, options, seg, measurements=measurements)
    t = time.perf_counter()
    result.path = save(result.dataset, Path(out_dir) / f"SR_{result.dataset.SOPInstanceUID}.dcm")
    result.timings["write_s"] = time.perf_counter() - t
    return result
