"""Lesions: the connected components of tumour classes, with RECIST-style axes.

A tumour class in the label map may be many separate lesions (the demo model's "Liver Tumor"
on a real CT: 52 fragments). Radiologists compare lesions one by one, by the long axis and
the perpendicular short axis measured on one image (RECIST 1.1), so each component above
``min_volume_ml`` becomes a :class:`Lesion`:

* component: 26-connected voxels of one tumour class;
* volume, mean HU and longest 3-D diameter of the component (as :mod:`.measurements`);
* long axis: on each source image (slice) of the component, the farthest pair of mask pixel
  centres (exact: convex hull + pairwise search); the lesion's image is the slice where that
  is longest (ties: the slice nearest the component's centre, then the lower index);
* short axis: on that image, the longest chord perpendicular to the long axis: lines
  perpendicular to it every half pixel, sampled every quarter pixel against the mask, the
  longest inside run, shortened by one pixel along its direction so that it is centre-to-centre
  like the long axis (accurate to about half a pixel), never longer than the long axis.

The image is a source slice, so for axial CT the axes are axial, as RECIST asks; for another
acquisition plane they lie in that plane (the SR must reference an image the PACS has).
Lengths are in mm from the true pixel spacing. Endpoints are kept as (row, column) pixel
centre indices; the SR writes them as SCOORD (column + 0.5, row + 0.5) per PS3.3 C.18.6.1.1.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import numpy as np
from scipy import ndimage

from .measurements import max_diameter_mm, mean_hu, voxel_volume_mm3

if TYPE_CHECKING:
    from model.catalog import Catalog, ClassEntry

#: (z, y, x) bounding box of a component in the volume.
Box3 = tuple[slice, slice, slice]

_CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)
_IDENTIFIER = re.compile(r"^(?P<cls>.+) lesion (?P<n>\d+)$")


@dataclass(frozen=True)
class Axis:
    length_mm: float
    start: tuple[float, float]  # (row, column) on the lesion's slice, pixel-centre indices
    end: tuple[float, float]

    @property
    def midpoint(self) -> tuple[float, float]:
        return ((self.start[0] + self.end[0]) / 2, (self.start[1] + self.end[1]) / 2)


@dataclass(frozen=True)
class Lesion:
    entry: ClassEntry  # of the tumour class
    rank: int  # 1 = largest component of its class in this series
    voxel_count: int
    volume_cm3: float
    mean_hu: float | None
    max_diameter_mm: float | None  # longest 3-D diameter (centre to centre)
    box: Box3  # (z, y, x) bounding box in the volume
    centroid_mm: tuple[float, float, float]  # LPS
    slice_index: int  # the volume slice (z) of the axes
    long_axis: Axis
    short_axis: Axis
    number: int = 0  # the "lesion N" of the tracking identifier (stable across revisions)
    tracking_uid: str = ""

    @property
    def label(self) -> int:
        return int(self.entry.index)

    @property
    def tracking_identifier(self) -> str:
        return f"{self.entry.name} lesion {self.number}"[:64]

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """This component's voxels within :attr:`box`, recomputed from the label map: the
        component of its class that holds the long axis' start (a pixel centre of the mask)."""
        comps, _ = ndimage.label(labels[self.box] == self.label, structure=_CONNECTIVITY_26)
        r, c = (int(round(v)) for v in self.long_axis.start)
        value = comps[self.slice_index - self.box[0].start, r - self.box[1].start, c - self.box[2].start]
        mask: np.ndarray = comps == value
        return mask


# ---- 2-D axes --------------------------------------------------------------------------------
def _boundary(mask2d: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) of mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask2d, 1)
    interior = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(2, 1))
    return np.argwhere(padded & ~interior) - 1


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices and distance of the farthest pair of 2-D points (exact)."""
    if len(points) == 1:
        return 0, 0, 0.0
    candidates = np.arange(len(points))
    if len(points) > 32:
        from scipy.spatial import ConvexHull, QhullError

        try:
            candidates = ConvexHull(points).vertices
        except QhullError:  # collinear: the extremes along the line are the answer
            pass
    pts = points[candidates]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d2.argmax()), d2.shape)
    return int(candidates[i]), int(candidates[j]), float(math.sqrt(d2[i, j]))


def long_axis(mask2d: np.ndarray, spacing_rc: tuple[float, float]) -> Axis | None:
    """Farthest pair of pixel centres of a 2-D mask, in mm (``spacing_rc``: row, column)."""
    rc = _boundary(mask2d)
    if len(rc) == 0:
        return None
    mm = rc * np.asarray(spacing_rc, float)
    i, j, d = _farthest_pair(mm)
    a = cast("tuple[float, float]", tuple(float(v) for v in rc[i]))
    b = cast("tuple[float, float]", tuple(float(v) for v in rc[j]))
    if (a[1], a[0]) > (b[1], b[0]):  # stable orientation: start = smaller column, then row
        a, b = b, a
    return Axis(d, a, b)


def short_axis(mask2d: np.ndarray, spacing_rc: tuple[float, float], long: Axis) -> Axis:
    """Longest chord of the mask perpendicular to ``long`` (see the module docstring)."""
    sr, sc = (float(v) for v in spacing_rc)
    start, end = np.array(long.start) * (sr, sc), np.array(long.end) * (sr, sc)
    if long.length_mm == 0:
        return Axis(0.0, long.start, long.start)
    u = (end - start) / long.length_mm  # (row mm, col mm) unit vector
    v = np.array([-u[1], u[0]])
    pixel = min(sr, sc)
    rows, cols = np.nonzero(mask2d)
    pts = np.stack([rows * sr, cols * sc], axis=1)
    t_all, s_all = pts @ u, pts @ v
    step_t, step_s = pixel / 2, pixel / 4
    ts = np.arange(t_all.min() - step_t, t_all.max() + step_t * 1.5, step_t)
    ss = np.arange(s_all.min() - pixel, s_all.max() + pixel * 1.5, step_s)
    T, S = np.meshgrid(ts, ss, indexing="ij")
    pr = np.rint((T * u[0] + S * v[0]) / sr).astype(np.int64)
    pc = np.rint((T * u[1] + S * v[1]) / sc).astype(np.int64)
    ok = (pr >= 0) & (pr < mask2d.shape[0]) & (pc >= 0) & (pc < mask2d.shape[1])
    inside = np.zeros(T.shape, bool)
    inside[ok] = mask2d[pr[ok], pc[ok]]
    best = (0.0, 0.0, 0.0, 0.0)  # (length, t, s0, s1)
    padded = np.pad(inside, ((0, 0), (1, 1)))
    edges = np.diff(padded.astype(np.int8), axis=1)
    for row in np.nonzero(inside.any(axis=1))[0]:
        starts = np.nonzero(edges[row] == 1)[0]
        stops = np.nonzero(edges[row] == -1)[0] - 1
        lengths = ss[stops] - ss[starts]
        k = int(lengths.argmax())
        if lengths[k] > best[0] + 1e-9:
            best = (float(lengths[k]), float(ts[row]), float(ss[starts[k]]), float(ss[stops[k]]))
    length, t, s0, s1 = best
    # Edge-to-edge -> centre-to-centre: one pixel's width along v, as the long axis measures.
    shrink = 1.0 / math.hypot(v[0] / sr, v[1] / sc) if (v[0] or v[1]) else pixel
    length = max(0.0, min(length - shrink, long.length_mm))
    mid = (s0 + s1) / 2
    a = t * u + (mid - length / 2) * v
    b = t * u + (mid + length / 2) * v
    a_rc, b_rc = (float(a[0] / sr), float(a[1] / sc)), (float(b[0] / sr), float(b[1] / sc))
    if (a_rc[1], a_rc[0]) > (b_rc[1], b_rc[0]):
        a_rc, b_rc = b_rc, a_rc
    return Axis(float(math.dist(a, b)), a_rc, b_rc)


# ---- lesions ---------------------------------------------------------------------------------
def find_lesions(labels: np.ndarray, hu: np.ndarray | None, affine: np.ndarray, catalog: Catalog, *,
                 min_volume_ml: float = 0.5) -> list[Lesion]:
    """Every tumour component of at least ``min_volume_ml``, largest first within each class
    (classes in catalog order); ``number`` = rank until :func:`assign_identities` runs."""
    a = np.asarray(affine, float)
    spacing_rc = (float(np.linalg.norm(a[:3, 1])), float(np.linalg.norm(a[:3, 0])))
    vvol = voxel_volume_mm3(a)
    boxes = ndimage.find_objects(labels)
    out: list[Lesion] = []
    for entry in catalog:
        if entry.kind != "tumor" or entry.index > len(boxes) or boxes[entry.index - 1] is None:
            continue
        cbox = boxes[entry.index - 1]
        comps, n = ndimage.label(labels[cbox] == entry.index, structure=_CONNECTIVITY_26)
        found: list[tuple[int, Box3, np.ndarray]] = []
        for k, box in enumerate(ndimage.find_objects(comps), start=1):
            mask = comps[box] == k
            count = int(np.count_nonzero(mask))
            if count * vvol / 1000.0 < min_volume_ml or count == 0:
                continue
            full_box = cast(Box3, tuple(slice(c.start + b.start, c.start + b.stop) for c, b in zip(cbox, box)))
            found.append((count, full_box, mask))
        found.sort(key=lambda f: (-f[0], tuple(s.start for s in f[1])))
        for rank, (count, box, mask) in enumerate(found, start=1):
            out.append(_lesion(entry, rank, count, box, mask, hu, a, spacing_rc, vvol))
    return out


def _lesion(entry: ClassEntry, rank: int, count: int, box: Box3, mask: np.ndarray, hu: np.ndarray | None,
            affine: np.ndarray, spacing_rc: tuple[float, float], vvol: float) -> Lesion:
    zyx = np.argwhere(mask).mean(axis=0) + [s.start for s in box]
    centroid = affine[:3, :3] @ zyx[::-1] + affine[:3, 3]
    best: tuple[tuple[float, float, int], int, Axis] | None = None
    for dz in range(mask.shape[0]):
        ax = long_axis(mask[dz], spacing_rc)
        if ax is None:
            continue
        key = (round(ax.length_mm, 6), -abs(box[0].start + dz - zyx[0]), -dz)
        if best is None or key > best[0]:
            best = (key, dz, ax)
    _, dz, long = best  # type: ignore[misc]  # not None: the component has a voxel, so a slice has an axis
    short = short_axis(mask[dz], spacing_rc, long)
    off = (box[1].start, box[2].start)

    def shift(axis: Axis) -> Axis:
        return Axis(axis.length_mm, (axis.start[0] + off[0], axis.start[1] + off[1]),
                    (axis.end[0] + off[0], axis.end[1] + off[1]))

    return Lesion(
        entry=entry, rank=rank, voxel_count=count, volume_cm3=count * vvol / 1000.0,
        mean_hu=mean_hu(hu[box], mask) if hu is not None else None,
        max_diameter_mm=max_diameter_mm(mask, affine, offset_zyx=tuple(s.start for s in box)),
        box=box, centroid_mm=cast("tuple[float, float, float]", tuple(float(v) for v in centroid)), slice_index=box[0].start + dz,
        long_axis=shift(long), short_axis=shift(short), number=rank,
    )


# ---- identity across revisions ----------------------------------------------------------------
@dataclass(frozen=True)
class KnownLesion:
    """A lesion reported for an earlier revision of the study (read back from its SR)."""

    class_name: str
    number: int
    tracking_uid: str
    midpoint_mm: tuple[float, float, float]  # LPS midpoint of its long axis
    long_axis_mm: float


def axis_world(lesion: Lesion, axis: Axis, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(affine, float)

    def world(rc: tuple[float, float]) -> np.ndarray:
        point: np.ndarray = a[:3, :3] @ np.array([rc[1], rc[0], lesion.slice_index], float) + a[:3, 3]
        return point

    return world(axis.start), world(axis.end)


def assign_identities(lesions: list[Lesion], affine: np.ndarray, uid_for: Callable[[str, str], str],
                      known: Sequence[KnownLesion] = ()) -> list[Lesion]:
    """Give each lesion its tracking number and UID.

    A lesion that matches one reported for an earlier revision of the study (same class, its
    long-axis midpoint within max(5 mm, half the earlier long axis) of the earlier one's,
    nearest first, one to one) keeps that lesion's number and Tracking UID. Others get the
    next free number of their class and ``uid_for(class name, key)`` with a key of the class
    and the centroid rounded to 1 mm, which does not involve the revision: identical labels in
    a later revision give identical UIDs even without the earlier SR.
    """
    out = list(lesions)
    taken: dict[str, set[int]] = {}
    pairs: list[tuple[float, int, int]] = []
    for i, les in enumerate(out):
        s, e = axis_world(les, les.long_axis, affine)
        mid = (s + e) / 2
        for j, k in enumerate(known):
            if k.class_name != les.entry.name:
                continue
            d = float(np.linalg.norm(mid - np.array(k.midpoint_mm)))
            if d <= max(5.0, 0.5 * k.long_axis_mm):
                pairs.append((d, i, j))
    used_i: set[int] = set()
    used_j: set[int] = set()
    for _d, i, j in sorted(pairs):
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        k = known[j]
        out[i] = replace(out[i], number=k.number, tracking_uid=k.tracking_uid)
        taken.setdefault(k.class_name, set()).add(k.number)
    for k in known:  # numbers of earlier lesions not found again are not reused
        taken.setdefault(k.class_name, set()).add(k.number)
    for i, les in enumerate(out):
        if i in used_i:
            continue
        name = les.entry.name
        used = taken.setdefault(name, set())
        n = les.rank if les.rank not in used and not known else (max(used) + 1 if used else 1)
        while n in used:
            n += 1
        used.add(n)
        key = "|".join(f"{v:.0f}" for v in les.centroid_mm)
        out[i] = replace(les, number=n, tracking_uid=uid_for(name, f"{name}|{key}"))
    return out


def parse_identifier(text: str) -> tuple[str, int] | None:
    """(class name, number) of a "<class> lesion <n>" tracking identifier."""
    m = _IDENTIFIER.match(text or "")
    return (m.group("cls"), int(m.group("n"))) if m else None
