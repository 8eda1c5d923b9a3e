"""DICOM-SEG writer (highdicom): one Segmentation per processed series.

* BINARY by default (Segmentation Storage), LABELMAP optional (Label Map Segmentation Storage);
* one segment per catalog class present in the label map, segment numbers 1..S in catalog
  order; an organ that is a tumour's parent holds its tumours too, hole-filled (BINARY, default
  ``organs_include_tumors``; see :mod:`.segments`); SegmentAlgorithmType AUTOMATIC; AlgorithmIdentification family DCM 123110
  "Artificial Intelligence", name, version = model version; catalog coding (category, type,
  type modifier for laterality, anatomic region for tumours) and display colour;
* IHE AIR Contributing Equipment item, deterministic UIDs (see :mod:`.uids`);
* frames reference their source slices (Derivation Image / Source Image Sequences) and carry
  their own plane positions, so readers can place them without assuming frame order.

Empty frames: BINARY omits the frames where a segment is absent (the standard allows it and
without it a 45-class SEG over 300 slices is 13 500 mostly empty frames, ~440 MB). Every
remaining frame says which slice it belongs to, which is what robust readers (dcmqi, highdicom,
OHIF/cornerstone, 3D Slicer) use. LABELMAP keeps every slice by default: a label map that is a
plain stack of the series is what simple readers expect, and it costs one frame per slice.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from highdicom.color import CIELabColor
from highdicom.content import AlgorithmIdentificationSequence
from highdicom.seg import (
    SegmentAlgorithmTypeValues,
    Segmentation,
    SegmentationTypeValues,
    SegmentDescription,
    SegmentsOverlapValues,
)

from . import coding
from .common import ResultError, character_set, check_source, quiet_source_warnings, save, tracking_identifier
from .options import ResultOptions
from .segments import TISSUE, WITH_TUMORS, SegmentPlan, plan_segments

if TYPE_CHECKING:
    from highdicom.volume import Volume as HighdicomVolume

    from model.catalog import Catalog, ClassEntry

    from ..volume.assembly import Volume
    from .uids import ResultUIDs

log = logging.getLogger(__name__)


@dataclass
class SegmentInfo:
    """One written segment: its number in the SEG and its catalog class."""

    number: int
    entry: ClassEntry
    voxel_count: int  # voxels of the segment as encoded (organ: tissue + tumours + filled holes)
    tracking_uid: str
    method: str = TISSUE  # segments.TISSUE | segments.WITH_TUMORS
    included_tumors: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        return int(self.entry.index)


@dataclass
class SegResult:
    dataset: Segmentation
    segments: list[SegmentInfo]
    seg_type: str
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    plan: SegmentPlan | None = None


def present_classes(labels: np.ndarray, catalog: Catalog) -> dict[int, int]:
    """{catalog index: voxel count} of the classes present; raises on values not in the catalog."""
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ResultError(f"labels must be an integer label map, got {labels.dtype}")
    counts = np.zeros(1, np.int64)
    flat = labels.reshape(len(labels), -1) if labels.ndim > 1 else labels.reshape(1, -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))  # ~4 M voxels per chunk: bounded temporaries
    for start in range(0, len(flat), step):
        c = np.bincount(flat[start:start + step].ravel())
        if len(c) > len(counts):
            c[: len(counts)] += counts
            counts = c
        else:
            counts[: len(c)] += c
    present = {int(v): int(c) for v, c in enumerate(counts) if v > 0 and c > 0}
    unknown = sorted(v for v in present if v > len(catalog))
    if unknown:
        raise ResultError(f"label values {unknown} are not catalog classes (1..{len(catalog)})")
    return present


def segment_text(method: str, included_tumors: tuple[str, ...]) -> str | None:
    """SegmentDescription of an organ segment that holds more than its own label."""
    if method != WITH_TUMORS:
        return None
    if included_tumors:
        return f"incl. {', '.join(included_tumors)}; enclosed holes filled"[:64]
    return "incl. its tumours (none found); enclosed holes filled"


def segment_description(entry: ClassEntry, number: int, options: ResultOptions, tracking_uid: str,
                        text: str | None = None, method: str | None = None) -> SegmentDescription:
    c = coding.resolve(entry)
    algorithm = AlgorithmIdentificationSequence(
        name=options.model_name, family=coding.ALGORITHM_FAMILY, version=str(options.model_version))
    desc = SegmentDescription(
        segment_number=number,
        segment_label=entry.name[:64],
        segmented_property_category=c.category,
        segmented_property_type=c.type,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid,
        tracking_id=tracking_identifier(entry, options, method),
        anatomic_regions=[c.anatomic_region] if c.anatomic_region is not None else None,
        display_color=CIELabColor.from_rgb(*entry.color),
    )
    if c.modifier is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            coding.code_item(c.modifier)]
    if text:
        desc.SegmentDescription = text
    return desc


def build_seg(volume: Volume, labels: np.ndarray, catalog: Catalog, options: ResultOptions, *,
              seg_type: str | None = None, present: dict[int, int] | None = None) -> SegResult | None:
    """The SEG for ``labels`` ((z, y, x) catalog indices on ``volume``'s grid); None if empty."""
    t0 = time.perf_counter()
    seg_type = seg_type or options.seg_type
    if seg_type not in ("BINARY", "LABELMAP"):
        raise ResultError(f"seg_type must be BINARY or LABELMAP, got {seg_type!r}")
    check_source(volume)
    if labels.shape != volume.shape:
        raise ResultError(f"label map shape {labels.shape} != CT shape {volume.shape}")
    if present is None:
        present = present_classes(labels, catalog)
    if not present:
        return None
    uids = options.uids(volume.series_instance_uid)
    # Overlap (organ incl. its tumours) exists only in BINARY; a label map has one value per pixel.
    plan = plan_segments(labels, catalog, present,
                         organs_include_tumors=options.organs_include_tumors and seg_type == "BINARY")
    segments: list[SegmentInfo] = []
    descriptions: list[SegmentDescription] = []
    for p in plan.segments:
        tracking = uids.tracking(p.entry.name)
        segments.append(SegmentInfo(p.number, p.entry, p.voxel_count, tracking, p.method, p.included_tumors))
        descriptions.append(segment_description(p.entry, p.number, options, tracking,
                                                segment_text(p.method, p.included_tumors), p.method))
    # Consecutive segment numbers (required for BINARY) let highdicom check a plain label map
    # with one max(); overlapping segments go through the partition (see segments.py).
    pixel = plan.partition
    if volume.is_multiframe:  # highdicom pairs pixel planes with the source frames in frame order
        pixel = pixel[volume.source_frame_order()]
    t1 = time.perf_counter()
    with quiet_source_warnings():
        cls = _partition_segmentation(plan.members) if plan.overlapping else Segmentation
        seg = _segmentation(cls, volume, pixel, seg_type, descriptions, uids, options)
    t2 = time.perf_counter()
    _finish(seg, options, uids)
    t3 = time.perf_counter()
    return SegResult(seg, segments, seg_type,
                     timings={"prepare_s": t1 - t0, "highdicom_s": t2 - t1, "finish_s": t3 - t2}, plan=plan)


def _partition_segmentation(members: np.ndarray) -> type[Segmentation]:
    """A highdicom Segmentation that takes the partition volume of a :class:`SegmentPlan`.

    highdicom accepts overlapping segments only as a (z, y, x, segments) stack; this subclass
    takes the (z, y, x) partition instead and cuts each frame's segment out with the membership
    table, through the two hooks highdicom itself uses for that (pixel check, per-frame segment
    extraction). Everything else (frames, functional groups, omission of empty frames, bit
    packing) is highdicom's own code. Pinned highdicom version: see constraints.txt; the
    round-trip tests read every segment back with highdicom and dcmqi.
    """

    class PartitionSegmentation(Segmentation):
        @classmethod
        def _check_and_cast_pixel_array(cls, pixel_array: np.ndarray | HighdicomVolume, segment_numbers: np.ndarray,
                                        segmentation_type: SegmentationTypeValues,
                                        dtype: type) -> tuple[np.ndarray | HighdicomVolume, SegmentsOverlapValues]:
            if pixel_array.ndim != 3 or len(segment_numbers) != members.shape[0] - 1:
                raise ValueError("the partition must be (frames, rows, columns) with one table row per segment")
            # Always the partition array (_segmentation passes it), never a highdicom Volume.
            if int(pixel_array.max()) >= members.shape[1]:  # type: ignore[union-attr]
                raise ValueError("partition values outside the membership table")
            return pixel_array, SegmentsOverlapValues.YES

        @staticmethod  # as in highdicom, which calls it through the instance
        def _get_segment_pixel_array(pixel_array: np.ndarray, segment_number: int, described_segment_numbers: np.ndarray,
                                     segmentation_type: SegmentationTypeValues, max_fractional_value: int,
                                     dtype: type) -> np.ndarray:
            plane: np.ndarray = members[segment_number][pixel_array].astype(dtype)
            return plane

    return PartitionSegmentation


def _segmentation(cls: type[Segmentation], volume: Volume, pixel: np.ndarray, seg_type: str,
                  descriptions: list[SegmentDescription], uids: ResultUIDs, options: ResultOptions) -> Segmentation:
    return cls(
        source_images=volume.headers,
        pixel_array=pixel,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=options.seg_series_number,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=options.manufacturer,
        manufacturer_model_name=options.model_name,
        software_versions=list(options.software_versions),  # type: ignore[arg-type]  # hint says tuple[str]; any str sequence works
        device_serial_number=options.device_serial_number,
        content_label=options.content_label,
        content_description=f"{options.model_name} {options.model_version} automatic segmentation"[:64],
        series_description=options.seg_series_description[:64],
        institution_name=options.institution_name,
        omit_empty_frames=options.omit_empty(seg_type),
        specific_character_set=character_set(volume),
    )


def _finish(seg: Segmentation, options: ResultOptions, uids: ResultUIDs) -> None:
    """AIR contributing equipment; deterministic DimensionOrganizationUID."""
    # highdicom's attribute type comes from its own ContributingEquipment items; pydicom holds
    # the value as a Sequence of plain Datasets.
    seg.ContributingEquipmentSequence.append(coding.air_contributing_equipment(  # type: ignore[arg-type]
        manufacturer=options.manufacturer, model_name=options.model_name,
        software_versions=options.software_versions, device_uid=options.algorithm_device_uid,
        institution_name=options.institution_name,
        description=f"AI segmentation by {options.model_name} {options.model_version}"))
    dim_uid = uids.dimension_organization
    if "DimensionOrganizationSequence" in seg:
        for item in seg.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = dim_uid
    if "DimensionIndexSequence" in seg:
        for item in seg.DimensionIndexSequence:
            item.DimensionOrganizationUID = dim_uid


def write_seg(volume: Volume, labels: np.ndarray, catalog: Catalog, options: ResultOptions,
              out_dir: str | os.PathLike[str], *,
              seg_type: str | None = None, present: dict[int, int] | None = None) -> SegResult | None:
    """Build the SEG and write it as ``out_dir/SEG_<SOPInstanceUID>.dcm``; None when no class is found."""
    result = build_seg(volume, labels, catalog, options, seg_type=seg_type, present=present)
    if result is None:
        return None
    t = time.perf_counter()
    result.path = save(result.dataset, Path(out_dir) / f"SEG_{result.dataset.SOPInstanceUID}.dcm")
    result.timings["write_s"] = time.perf_counter() - t
    return result
