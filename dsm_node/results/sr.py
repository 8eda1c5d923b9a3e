"""TID 1500 "Imaging Measurement Report" as a Comprehensive 3D SR (highdicom).

* observer = the node as a device (TID 1004: Device Observer UID, name, manufacturer, model);
* one TID 1411 volumetric measurement group per segment of the SEG: tracking identifier + UID
  (the segment's Tracking UID), referenced segment (SEG SOP Instance + segment number, source
  series), finding category/type (the segment's category/type), finding site (organ + laterality;
  for tumours the parent organ), algorithm identification, Measurement Method saying what the
  segment holds (organ incl. its tumours, hole-filled, or the class's own voxels), and
  measurements: volume (SCT 118565006, cm3) and mean attenuation (DCM 112031 "Attenuation
  Coefficient" with derivation SCT 373098007 Mean, [hnsf'U]) of the segment as encoded; for an
  organ encoded as its tissue only that is a tumour's parent, a second Volume with its own
  Measurement Method "Organ incl. its tumours, enclosed holes filled";
* per segment also a TID 1410 planar ROI group with the same tracking identifier and UID (the
  same finding): the segment's outline (closed SCOORD POLYLINE, :mod:`.outlines`) on the image
  where it is largest. It locates the finding on an image; it also keeps OHIF (3.13) working:
  OHIF merges the groups of one tracking UID and throws ("Something went wrong") on an SR
  holding any finding without spatial coordinates;
* one TID 1501 measurement group per lesion (tumour component >= lesion_min_volume_ml, see
  :mod:`.lesions`): tracking identifier "<class> lesion <n>" + a Tracking UID stable across
  revisions, finding category/type/site as the class, the lesion's image as source image, and
  Long axis (SCT 103339001) and Short axis (SCT 103340004) in mm, each INFERRED FROM a SCOORD
  POLYLINE of its two end points on that image (the pattern OHIF reads and draws, as its own
  bidirectional measurements), then the lesion's volume, mean attenuation and longest 3-D
  diameter (SCT 81827009 with derivation SCT 56851009 Maximum, mm);
* no findings: no SEG, and a report whose "Qualitative Evaluations" container (TID 1500 row 10)
  says Finding = SCT 260413007 "None" plus a text comment.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from . import coding
from .common import ResultError, character_set, check_source, quiet_source_warnings, save, tracking_identifier
from .lesions import KnownLesion, Lesion, assign_identities, find_lesions, parse_identifier
from .measurements import LabelMeasurement, mean_hu, measure_labels
from .options import ResultOptions
from .outlines import largest_slice, outline
from .seg import SegResult
from .segments import TISSUE, WITH_TUMORS, SegmentPlan, extend_organs
from .uids import lesion_tracking_uid

if TYPE_CHECKING:
    from model.catalog import Catalog, ClassEntry

    from ..volume.assembly import Volume
    from .lesions import Axis
    from .seg import SegmentInfo
    from .uids import ResultUIDs

#: A measurement group of the report (TID 1410, 1411 or 1501).
Group = (PlanarROIMeasurementsAndQualitativeEvaluations | VolumetricROIMeasurementsAndQualitativeEvaluations
         | MeasurementsAndQualitativeEvaluations)

QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = CodedConcept.from_code(codes.DCM.Comment)


@dataclass
class SRResult:
    dataset: Comprehensive3DSR
    measurements: dict[int, LabelMeasurement]  # by catalog index: the segment as encoded
    no_findings: bool
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    lesions: list[Lesion] = field(default_factory=list)
    # Organs whose segment is their tissue only: volume/HU of the organ incl. its tumours,
    # holes filled (reported beside the segment's own volume), by catalog index.
    with_tumors: dict[int, LabelMeasurement] = field(default_factory=dict)


def measure(volume: Volume, labels: np.ndarray, catalog: Catalog, plan: SegmentPlan | None = None) -> dict[int, LabelMeasurement]:
    """Volume and mean HU of every segment as the SEG encodes it: a class's own voxels, or,
    for an organ built with its tumours (``plan``), the organ segment's voxels."""
    out = measure_labels(labels, volume.hu, volume.affine_lps)
    if plan is not None:
        vvol = float(volume.voxel_volume_mm3)
        for p in plan.segments:
            if p.method != WITH_TUMORS or p.number not in plan.boxes:
                continue
            box = plan.boxes[p.number]
            mask = plan.mask(p.number, box)
            count = int(np.count_nonzero(mask))
            out[p.label] = LabelMeasurement(p.label, count, count * vvol / 1000.0,
                                            mean_hu(volume.hu[box], mask), None, box)
    return out


def organs_with_tumors(volume: Volume, labels: np.ndarray, catalog: Catalog, seg: SegResult) -> dict[int, LabelMeasurement]:
    """For organ segments encoded as their tissue only, the organ incl. its tumours (holes
    filled), measured with the same rule the overlapping encoding uses (:mod:`.segments`),
    computed in the organs' boxes (no second source-sized plan)."""
    if seg.plan is None:
        return {}
    tissue_only = {p.label: p.tissue_count for p in seg.plan.segments if p.method == TISSUE}
    present = {p.label for p in seg.plan.segments}
    vvol = float(volume.voxel_volume_mm3)
    out: dict[int, LabelMeasurement] = {}
    # Organs already encoded with their tumours (organs_include_tumors) are not extended again.
    for organ, ext in extend_organs(labels, catalog, present, only=set(tissue_only)).items():
        count = int(np.count_nonzero(ext.mask))
        # Only where the whole organ differs from the tissue (a tumour or a filled hole in it).
        if count == tissue_only[organ]:
            continue
        out[organ] = LabelMeasurement(organ, count, count * vvol / 1000.0, mean_hu(volume.hu[ext.box], ext.mask),
                                      None, ext.box)
    return out


def lesions_of(volume: Volume, labels: np.ndarray, catalog: Catalog, options: ResultOptions,
               known: Sequence[KnownLesion] = ()) -> list[Lesion]:
    """The lesions of ``labels`` with their tracking numbers and UIDs (see :mod:`.lesions`)."""
    found = find_lesions(labels, volume.hu, volume.affine_lps, catalog, min_volume_ml=options.lesion_min_volume_ml)

    def uid_for(_name: str, key: str) -> str:
        return lesion_tracking_uid(options.uid_root, volume.study_instance_uid, key)

    return assign_identities(found, volume.affine_lps, uid_for, list(known))


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


def _finding_sites(entry: ClassEntry) -> list[FindingSite]:
    c = coding.resolve(entry)
    if entry.kind == "tumor":
        site = c.anatomic_region
        return [FindingSite(site)] if site is not None else []
    sites = [FindingSite(c.type, laterality=c.modifier)]
    if c.anatomic_region is not None:  # e.g. Hepatic Vessel: Blood Vessel, in the Liver
        sites.append(FindingSite(c.anatomic_region))
    return sites


def _group(seg: SegResult, segment: SegmentInfo, m: LabelMeasurement, options: ResultOptions, source_series: str,
           with_tumors: LabelMeasurement | None = None) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    entry = segment.entry
    c = coding.resolve(entry)
    algo = _algorithm(options)
    measurements = [Measurement(name=coding.VOLUME, value=round(m.volume_cm3, 4), unit=coding.CM3, algorithm_id=algo)]
    if m.mean_hu is not None:
        measurements.append(Measurement(name=coding.ATTENUATION, value=round(m.mean_hu, 2), unit=coding.HU,
                                        derivation=coding.MEAN, algorithm_id=algo))
    if with_tumors is not None:  # the segment is the tissue only: also the whole organ, said so
        measurements.append(Measurement(name=coding.VOLUME, value=round(with_tumors.volume_cm3, 4), unit=coding.CM3,
                                        method=coding.METHOD_ORGAN_WITH_TUMORS, algorithm_id=algo))
    method = coding.METHOD_ORGAN_WITH_TUMORS if segment.method == WITH_TUMORS else coding.METHOD_CLASS_VOXELS
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=segment.tracking_uid, identifier=tracking_identifier(segment.entry, options, segment.method)),
        referenced_segment=ReferencedSegment(
            sop_class_uid=seg.dataset.SOPClassUID, sop_instance_uid=seg.dataset.SOPInstanceUID,
            segment_number=segment.number, source_series=SourceSeriesForSegmentation(source_series)),
        finding_type=c.type,
        finding_category=c.category,
        finding_sites=_finding_sites(entry),
        method=method,
        algorithm_id=algo,
        measurements=measurements,
    )


def scoord_points(points_rc: Iterable[Sequence[float]]) -> np.ndarray:
    """(row, column) pixel-centre indices -> SCOORD image coordinates (column + 0.5, row + 0.5),
    PS3.3 C.18.6.1.1 (the top left corner of the image is 0\\0)."""
    return np.array([[p[1] + 0.5, p[0] + 0.5] for p in points_rc], dtype=np.float32)


def _image_of(volume: Volume, k: int) -> SourceImageForRegion:
    frame = volume.frames[k]
    # frame_number is set for every frame of a multi-frame source.
    return SourceImageForRegion(frame.sop_class_uid, frame.sop_instance_uid,
                                [frame.frame_number] if volume.is_multiframe else None)  # type: ignore[list-item]


def _outline_group(volume: Volume, seg: SegResult, segment: SegmentInfo,
                   options: ResultOptions) -> PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410 companion of a segment's volumetric group: its outline where it is largest."""
    plan = seg.plan
    if plan is None or segment.number not in plan.boxes:
        return None
    box = plan.boxes[segment.number]
    mask = plan.mask(segment.number, box)
    dz = largest_slice(mask)
    poly = outline(mask[dz])
    if len(poly) < 4:
        return None
    poly = poly + (box[1].start, box[2].start)
    c = coding.resolve(segment.entry)
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=segment.tracking_uid, identifier=tracking_identifier(segment.entry, options, segment.method)),
        referenced_region=ImageRegion(GraphicTypeValues.POLYLINE, scoord_points(poly), _image_of(volume, box[0].start + dz)),
        finding_type=c.type,
        finding_category=c.category,
        finding_sites=_finding_sites(segment.entry),
        algorithm_id=_algorithm(options),
    )


def _lesion_group(volume: Volume, lesion: Lesion, options: ResultOptions) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of one lesion: long/short axis lines on its image, then volumetric values.

    The lines' NUMs carry the algorithm as concept modifiers next to the SCOORD; the volume,
    attenuation and 3-D diameter NUMs carry no content items of their own (the group names the
    algorithm), which is what lets OHIF list the volume with the axes."""
    entry = lesion.entry
    c = coding.resolve(entry)
    algo = _algorithm(options)
    frame = volume.frames[lesion.slice_index]
    image = _image_of(volume, lesion.slice_index)

    def line(name: CodedConcept, axis: Axis) -> Measurement:
        return Measurement(name=name, value=round(axis.length_mm, 2), unit=coding.MM, algorithm_id=algo,
                           referenced_coordinates=[CoordinatesForMeasurement(
                               GraphicTypeValues.POLYLINE, scoord_points((axis.start, axis.end)), image)])

    measurements = [line(coding.LONG_AXIS, lesion.long_axis), line(coding.SHORT_AXIS, lesion.short_axis),
                    Measurement(name=coding.VOLUME, value=round(lesion.volume_cm3, 4), unit=coding.CM3)]
    if lesion.mean_hu is not None:
        measurements.append(Measurement(name=coding.ATTENUATION, value=round(lesion.mean_hu, 2), unit=coding.HU,
                                        derivation=coding.MEAN))
    if lesion.max_diameter_mm is not None:
        measurements.append(Measurement(name=coding.DIAMETER, value=round(lesion.max_diameter_mm, 2), unit=coding.MM,
                                        derivation=coding.MAXIMUM))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_identifier),
        finding_type=c.type,
        finding_category=c.category,
        finding_sites=_finding_sites(entry),
        algorithm_id=algo,
        measurements=measurements,
        source_images=[SourceImageForMeasurementGroup(
            frame.sop_class_uid, frame.sop_instance_uid,
            [frame.frame_number] if volume.is_multiframe else None)],  # type: ignore[list-item]  # as in _image_of
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
    # pydicom turns the list into a Sequence on assignment.
    evaluations.ContentSequence = [  # type: ignore[assignment]
        CodeContentItem(name=coding.FINDING, value=coding.NONE, relationship_type=RelationshipTypeValues.CONTAINS),
        TextContentItem(name=COMMENT, relationship_type=RelationshipTypeValues.CONTAINS,
                        value=f"No findings: {options.model_name} {options.model_version} segmented none of the "
                              f"{n_classes} catalog classes in this series."),
    ]
    items = [it for it in root.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue != "126010"]
    root.ContentSequence = [*items, evaluations]  # replaces the "Imaging Measurements" container
    return report


def _reference_stub(ds: Dataset) -> Dataset:
    """The four UIDs highdicom needs to list an instance as evidence (not the whole SEG)."""
    stub = Dataset()
    for attr in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(stub, attr, getattr(ds, attr))
    return stub


def build_sr(volume: Volume, labels: np.ndarray | None, catalog: Catalog, options: ResultOptions,
             seg: SegResult | None, *, measurements: dict[int, LabelMeasurement] | None = None,
             lesions: list[Lesion] | None = None, known: Sequence[KnownLesion] = ()) -> SRResult:
    """The SR for one processed series. ``seg`` None (or no segments) -> a "no findings" report.

    ``lesions``: as :func:`lesions_of` returns them (computed here from ``labels`` when None);
    ``known``: lesions of earlier revisions of the study, whose numbers and UIDs they keep."""
    t0 = time.perf_counter()
    check_source(volume)
    uids = options.uids(volume.series_instance_uid)
    no_findings = seg is None or not seg.segments
    if seg is not None and seg.segments:  # = not no_findings, spelled so that seg is narrowed
        if labels is None and (measurements is None or lesions is None):
            raise ResultError("labels, or measurements and lesions, are needed for the measurement groups")
        if measurements is None:
            measurements = measure(volume, labels, catalog, seg.plan)  # type: ignore[arg-type]  # labels: see above
        if lesions is None:
            lesions = lesions_of(volume, labels, catalog, options, known)  # type: ignore[arg-type]  # labels: see above
        whole = organs_with_tumors(volume, labels, catalog, seg) if labels is not None else {}
        t_measured = time.perf_counter()
        groups: list[Group] = []
        for segment in seg.segments:
            m = measurements.get(segment.label)
            if m is None:
                raise ResultError(f"no measurement for segment {segment.number} ({segment.entry.name})")
            groups.append(_group(seg, segment, m, options, volume.series_instance_uid, whole.get(segment.label)))
            companion = _outline_group(volume, seg, segment, options)
            if companion is not None:
                groups.append(companion)
        groups += [_lesion_group(volume, lesion, options) for lesion in lesions]
        report = MeasurementReport(
            observation_context=_observation_context(options),
            procedure_reported=coding.PROCEDURE_REPORTED,
            imaging_measurements=groups,
            title=codes.DCM.ImagingMeasurementReport,
        )
        evidence = [*volume.headers, _reference_stub(seg.dataset)]
    else:
        measurements, lesions, whole = {}, [], {}
        t_measured = time.perf_counter()
        report = _no_findings_report(options, len(catalog))
        evidence = list(volume.headers)
    t1 = time.perf_counter()
    with quiet_source_warnings():
        sr = _sr_dataset(volume, evidence, report, uids, options)
    # highdicom's attribute type comes from its own ContributingEquipment items; pydicom holds
    # the value as a Sequence of plain Datasets.
    sr.ContributingEquipmentSequence.append(coding.air_contributing_equipment(  # type: ignore[arg-type]
        manufacturer=options.manufacturer, model_name=options.model_name,
        software_versions=options.software_versions, device_uid=options.algorithm_device_uid,
        institution_name=options.institution_name,
        description=f"AI measurements by {options.model_name} {options.model_version}"))
    t2 = time.perf_counter()
    return SRResult(sr, measurements, no_findings,
                    timings={"measure_s": t_measured - t0, "content_s": t1 - t_measured, "highdicom_s": t2 - t1},
                    lesions=list(lesions), with_tumors=whole)


def _sr_dataset(volume: Volume, evidence: list[Dataset], report: MeasurementReport, uids: ResultUIDs,
                options: ResultOptions) -> Comprehensive3DSR:
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


def write_sr(volume: Volume, labels: np.ndarray | None, catalog: Catalog, options: ResultOptions,
             seg: SegResult | None, out_dir: str | os.PathLike[str], *,
             measurements: dict[int, LabelMeasurement] | None = None, lesions: list[Lesion] | None = None,
             known: Sequence[KnownLesion] = ()) -> SRResult:
    """Build the SR and write it as ``out_dir/SR_<SOPInstanceUID>.dcm``."""
    result = build_sr(volume, labels, catalog, options, seg, measurements=measurements, lesions=lesions, known=known)
    t = time.perf_counter()
    result.path = save(result.dataset, Path(out_dir) / f"SR_{result.dataset.SOPInstanceUID}.dcm")
    result.timings["write_s"] = time.perf_counter() - t
    return result


# ---- reading lesions back (identity across revisions) --------------------------------------------
def known_lesions(sr_paths: Iterable[str | os.PathLike[str]], volume: Volume) -> list[KnownLesion]:
    """Lesion groups of earlier SRs of the study, placed with ``volume``'s geometry.

    A group counts when its tracking identifier is "<class> lesion <n>" and its Long axis NUM
    is inferred from a two-point SCOORD on an image of ``volume`` (same series). The first SR
    that names a tracking UID wins, so pass the newest first."""
    import pydicom

    slice_of = {f.sop_instance_uid: k for k, f in enumerate(volume.frames)}
    a = np.asarray(volume.affine_lps, float)
    out: list[KnownLesion] = []
    seen: set[str] = set()
    for path in sr_paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # an unreadable earlier result only loses the identity hint
            continue
        for group in _measurement_groups(ds):
            found = _known_from_group(group, slice_of, a)
            if found is not None and found.tracking_uid not in seen:
                seen.add(found.tracking_uid)
                out.append(found)
    return out


def _code(item: Dataset) -> str:
    code: str = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
    return code


def _measurement_groups(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        if _code(item) == "126010":  # Imaging Measurements
            yield from (g for g in item.get("ContentSequence", []) if _code(g) == "125007")


def _known_from_group(group: Dataset, slice_of: dict[str, int], affine: np.ndarray) -> KnownLesion | None:
    ident: tuple[str, int] | None = None
    uid: str | None = None
    line: tuple[float, list[float], str] | None = None
    for item in group.get("ContentSequence", []):
        code = _code(item)
        if code == "112039":
            ident = parse_identifier(str(item.TextValue))
        elif code == "112040":
            uid = str(item.UID)
        elif code == coding.LONG_AXIS.value and item.ValueType == "NUM":
            length = float(item.MeasuredValueSequence[0].NumericValue)
            for sub in item.get("ContentSequence", []):
                if sub.ValueType == "SCOORD" and len(sub.GraphicData) == 4:
                    ref = sub.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    line = (length, [float(v) for v in sub.GraphicData], str(ref))
    if ident is None or uid is None or line is None or line[2] not in slice_of:
        return None
    length, (c0, r0, c1, r1), ref = line
    k = slice_of[ref]
    ends = [affine[:3, :3] @ np.array([c - 0.5, r - 0.5, k]) + affine[:3, 3] for c, r in ((c0, r0), (c1, r1))]
    mid = (ends[0] + ends[1]) / 2
    return KnownLesion(ident[0], ident[1], uid, cast("tuple[float, float, float]", tuple(float(v) for v in mid)), length)
