"""What each SEG segment holds, built from the segmenter's single label map.

The segmenter delivers ONE label map of catalog indices in which a tumour voxel carries the
tumour's class, not its organ's. Radiologists and other tools (TotalSegmentator, dcmqi
examples, commercial AI) expect an organ segment to be the whole organ, tumours included, with
the tumour as a segment of its own on top. So, by default (``organs_include_tumors``):

* an organ that is the parent of a catalog tumour class is encoded as its tissue plus the
  tumour components that touch it, with enclosed cavities filled (3-D hole filling: only
  voxels that cannot reach the outside of the organ without crossing it, so a vessel or the
  renal pelvis that leaves through the hilum is not swallowed). The same rule applies whether
  or not a tumour was found, so the organ's definition does not change between visits with
  and without a finding;
* a tumour component is folded into the parent organ it touches most (26-connectivity,
  contact = parent voxels in its one-voxel shell); a component touching none of its parents
  stays a tumour only;
* every other class, and every tumour class, is encoded as its own label.

Segments then overlap, which BINARY SEG allows (SegmentsOverlap YES). LABELMAP cannot
represent overlap (one value per pixel): there, and with ``organs_include_tumors`` off, each
segment is exactly its own label ("tissue"). :class:`SegmentPlan` records which rule made each
segment so the SR can say what its volume measures.

Memory: instead of a (z, y, x, segments) boolean stack (2.4 GB for 30 segments on 300
slices), the plan is one small-integer *partition* volume (each value = one combination of
segments a voxel belongs to) plus a membership table; the SEG writer hands highdicom the
partition and extracts each segment per frame with the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, cast

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from model.catalog import Catalog, ClassEntry

#: A (z, y, x) bounding box as ndimage.find_objects gives it.
Box = tuple[slice, ...]

#: How a segment was built (also the SR's measurement method for its volume).
TISSUE = "tissue"
WITH_TUMORS = "with_tumours"  # the value is written to export JSON ("content"): kept

_CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class PlannedSegment:
    """One segment of the SEG: its number, catalog class and what it contains."""

    number: int
    entry: ClassEntry
    voxel_count: int  # voxels of the segment as encoded
    tissue_count: int  # voxels labelled with the class itself
    method: str  # TISSUE | WITH_TUMORS
    included_tumors: tuple[str, ...] = ()  # tumour classes folded in (names)
    tumor_voxels: int = 0  # voxels added from tumours
    filled_voxels: int = 0  # voxels added by hole filling (not tissue, not tumour)

    @property
    def label(self) -> int:
        return int(self.entry.index)


@dataclass
class SegmentPlan:
    """Segments plus the partition volume that encodes them (see the module docstring)."""

    segments: list[PlannedSegment]
    partition: np.ndarray  # (z, y, x) uint8/uint16 partition values, 0 = no segment
    members: np.ndarray  # (S + 1, P) bool: members[n, v] = value v belongs to segment n
    boxes: dict[int, tuple[slice, slice, slice]] = field(default_factory=dict)  # by segment number

    @property
    def overlapping(self) -> bool:
        return bool((self.members[1:].sum(axis=0) > 1).any())

    def by_number(self, number: int) -> PlannedSegment:
        return self.segments[number - 1]

    def mask(self, number: int, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """Boolean mask of segment ``number`` (whole volume, or cropped to ``box``)."""
        part = self.partition if box is None else self.partition[box]
        mask: np.ndarray = self.members[number][part]
        return mask

    def plane_mask(self, plane: np.ndarray, number: int) -> np.ndarray:
        mask: np.ndarray = self.members[number][plane]
        return mask


def _box_union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _grow(box: Box, shape: tuple[int, ...], by: int = 1) -> Box:
    return tuple(slice(max(0, s.start - by), min(n, s.stop + by)) for s, n in zip(box, shape))


def _tumor_parents(catalog: Catalog, present: set[int]) -> dict[int, list[int]]:
    """{tumour class index: [parent organ indices present]} for every tumour class present."""
    out: dict[int, list[int]] = {}
    for e in catalog:
        if e.kind == "tumor" and e.index in present:
            out[e.index] = [p for p in (_index_of(catalog, name) for name in e.parents) if p in present]
    return out


def _assign_tumors(labels: np.ndarray, tumor_parents: dict[int, list[int]],
                    boxes: list[Box | None]) -> dict[int, list[tuple[int, Box, np.ndarray]]]:
    """{organ index: [(tumour index, box, component mask in box)]}: each tumour component goes
    to the parent organ with the most voxels in its one-voxel shell (none: not folded in)."""
    folded: dict[int, list[tuple[int, Box, np.ndarray]]] = {}
    for tumor, parents in tumor_parents.items():
        box = boxes[tumor - 1]
        if not parents or box is None:
            continue
        box = _grow(box, labels.shape)
        sub = labels[box]
        components, n = ndimage.label(sub == tumor, structure=_CONNECTIVITY_26)
        if n == 0:
            continue
        for k, cbox in enumerate(ndimage.find_objects(components), start=1):
            shell_box = _grow(cbox, sub.shape)
            comp = components[shell_box] == k
            shell = ndimage.binary_dilation(comp, structure=_CONNECTIVITY_26) & ~comp
            around = sub[shell_box][shell]
            contact = {p: int(np.count_nonzero(around == p)) for p in parents}
            best = max(parents, key=lambda p: (contact[p], -p))
            if contact[best] == 0:
                continue
            offset = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, cbox))
            folded.setdefault(best, []).append((tumor, offset, components[cbox] == k))
    return folded


class _Extended(TypedDict, total=False):
    """The :class:`PlannedSegment` fields of an organ extended with its tumours."""

    method: str
    included: tuple[str, ...]
    tumor_voxels: int
    filled_voxels: int


@dataclass(frozen=True)
class ExtendedOrgan:
    """An organ as its tissue plus the tumour components folded into it, enclosed holes filled."""

    box: tuple[slice, slice, slice]  # where ``mask`` lies (the organ and its tumours, grown by a voxel)
    mask: np.ndarray  # the whole organ in ``box``
    extra: np.ndarray  # the part of ``mask`` that is not the organ's own label
    included: tuple[str, ...]  # tumour classes folded in (names)
    tumor_voxels: int
    filled_voxels: int


def extend_organs(labels: np.ndarray, catalog: Catalog, present: set[int],
                  boxes_by_label: list[Box | None] | None = None,
                  only: set[int] | None = None) -> dict[int, ExtendedOrgan]:
    """{organ index: its extension} for every present organ that is a tumour's parent in the
    catalog (the rule of the module docstring), or for those of them in ``only`` (tumours are
    still assigned among all present parents). Works in the organs' boxes only: nothing
    source-sized is allocated."""
    parent_classes = {p for e in catalog if e.kind == "tumor"
                      for p in (_index_of(catalog, name) for name in e.parents) if p in present}
    if only is not None:
        parent_classes &= only
    if not parent_classes:
        return {}
    if boxes_by_label is None:
        boxes_by_label = ndimage.find_objects(labels)
    folded = _assign_tumors(labels, _tumor_parents(catalog, present), boxes_by_label)
    out: dict[int, ExtendedOrgan] = {}
    for organ in sorted(parent_classes):
        own = boxes_by_label[organ - 1]
        if own is None:  # present classes have voxels; a caller's stale boxes would not
            continue
        for _t, tbox, _m in folded.get(organ, []):
            own = _box_union(own, tbox)
        box = cast(tuple[slice, slice, slice], _grow(own, labels.shape))
        whole = labels[box] == organ
        tumor_voxels = np.zeros_like(whole)
        names = []
        for tumor, tbox, tmask in folded.get(organ, []):
            local = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(tbox, box))
            tumor_voxels[local] |= tmask
            names.append(catalog[tumor - 1].name)
        whole |= tumor_voxels
        filled = ndimage.binary_fill_holes(whole)
        extra = filled & (labels[box] != organ)
        out[organ] = ExtendedOrgan(box, filled, extra, tuple(dict.fromkeys(names)),
                                   int(np.count_nonzero(tumor_voxels)), int(np.count_nonzero(extra & ~tumor_voxels)))
    return out


def plan_segments(labels: np.ndarray, catalog: Catalog, present: dict[int, int], *,
                  organs_include_tumors: bool = True) -> SegmentPlan:
    """The segments for ``present`` classes ({catalog index: voxels}, catalog order)."""
    classes = sorted(present)
    n_seg = len(classes)
    number = {cls: n for n, cls in enumerate(classes, start=1)}
    lut = np.zeros(max(int(labels.max()), len(catalog)) + 1, dtype=np.uint8 if n_seg < 255 else np.uint16)
    for cls, n in number.items():
        lut[cls] = n
    base = lut[labels]
    boxes_by_label = ndimage.find_objects(labels)
    seg_boxes = {number[c]: boxes_by_label[c - 1] for c in classes if c - 1 < len(boxes_by_label)}

    extras: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}  # organ number -> (box, extra mask)
    info: dict[int, _Extended] = {}
    if organs_include_tumors:
        for organ, ext in extend_organs(labels, catalog, set(classes), boxes_by_label).items():
            info[organ] = {"method": WITH_TUMORS, "included": ext.included,
                           "tumor_voxels": ext.tumor_voxels, "filled_voxels": ext.filled_voxels}
            if ext.extra.any():
                extras[number[organ]] = (ext.box, ext.extra)
                seg_boxes[number[organ]] = _box_union(seg_boxes.get(number[organ]), ext.box)

    partition, members = _partition(base, n_seg, extras)
    segments = []
    for cls in classes:
        n = number[cls]
        i = info.get(cls, {})
        count = present[cls] + (int(np.count_nonzero(extras[n][1])) if n in extras else 0)
        segments.append(PlannedSegment(
            number=n, entry=catalog[cls - 1], voxel_count=count, tissue_count=present[cls],
            method=i.get("method", TISSUE), included_tumors=i.get("included", ()),
            tumor_voxels=i.get("tumor_voxels", 0), filled_voxels=i.get("filled_voxels", 0)))
    return SegmentPlan(segments, partition, members, seg_boxes)


def _index_of(catalog: Catalog, name: str) -> int | None:
    for e in catalog:
        if e.name == name:
            return int(e.index)
    return None


def _partition(base: np.ndarray, n_seg: int, extras: dict[int, tuple[Box, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Partition volume + membership table. Plain voxels keep their segment number; a voxel that
    also belongs to extended organs gets a value for its (own segment, organs) combination."""
    members = np.eye(n_seg + 1, dtype=bool)
    members[0, 0] = False
    if not extras:
        return base, members
    if len(extras) > 63:
        raise ValueError("more than 63 organs extended with tumours in one series")
    shape = base.shape
    flat_idx, bits = [], []
    for j, (_num, (box, extra)) in enumerate(sorted(extras.items())):
        zyx = np.nonzero(extra)
        idx = np.ravel_multi_index(tuple(z + b.start for z, b in zip(zyx, box)), shape)
        flat_idx.append(idx)
        bits.append(np.full(len(idx), np.uint64(1) << np.uint64(j), dtype=np.uint64))
    idx = np.concatenate(flat_idx)
    bit = np.concatenate(bits)
    voxels, inverse = np.unique(idx, return_inverse=True)
    code = np.zeros(len(voxels), np.uint64)
    np.bitwise_or.at(code, inverse, bit)
    own = base.ravel()[voxels].astype(np.uint64)
    combos, combo_of_voxel = np.unique(np.stack([own, code], axis=1), axis=0, return_inverse=True)
    total = n_seg + 1 + len(combos)
    dtype = np.uint8 if total <= 256 else np.uint16
    if total > 65536:
        raise ValueError("too many overlapping segment combinations")
    # ``base`` is plan_segments' own array: rewritten in place when the dtype allows (no second
    # source-sized copy)
    partition = base if base.dtype == dtype else base.astype(dtype)
    partition.reshape(-1)[voxels] = (n_seg + 1 + combo_of_voxel.ravel()).astype(dtype)
    organ_numbers = [num for num, _ in sorted(extras.items())]
    table = np.zeros((n_seg + 1, total), dtype=bool)
    table[:, : n_seg + 1] = members
    for c, (own_n, c_bits) in enumerate(combos):
        v = n_seg + 1 + c
        if own_n:
            table[int(own_n), v] = True
        for j, num in enumerate(organ_numbers):
            if int(c_bits) >> j & 1:
                table[num, v] = True
    return partition, table
