"""Measurements of label masks on the source grid (pure numpy / scipy).

All lengths and volumes use the true voxel geometry (the LPS affine: anisotropic, oblique or
sheared grids alike):

* volume (cm^3 = ml) = voxel count x |det(affine[:3, :3])| / 1000;
* mean attenuation (HU) = mean of the CT over the mask;
* longest 3-D diameter (mm) = the largest distance between the centres of two surface voxels
  (voxels of the mask with a 6-neighbour outside it). Computed as the diameter of the convex
  hull of the surface-voxel centres in mm (the farthest pair of points is always a pair of hull
  vertices), then an exact search over hull vertices. Being centre-to-centre it is up to about
  one voxel shorter than an edge-to-edge caliper; a single voxel measures 0 mm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from model.spill import chunks, mapping_of, release


@dataclass(frozen=True)
class LabelMeasurement:
    label: int
    voxel_count: int
    volume_cm3: float
    mean_hu: float | None
    max_diameter_mm: float | None
    bbox: tuple[slice, slice, slice]  # (z, y, x) bounding box in the label array


def voxel_volume_mm3(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))


def volume_cm3(voxel_count: int, affine: np.ndarray) -> float:
    """Volume of ``voxel_count`` voxels in cm^3 (ml)."""
    return float(voxel_count) * voxel_volume_mm3(affine) / 1000.0


def mean_hu(hu: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of ``hu`` over ``mask`` (same shape); None for an empty mask.

    A file-backed CT (model/spill.py) is read in chunks whose pages are released after each:
    the box of a large organ covers most of the volume, which must not become resident."""
    if mapping_of(hu) is None:
        values = hu[mask]
        if values.size == 0:
            return None
        return float(values.mean(dtype=np.float64))
    # Integer HU: the exact integer sum gives the same float64 mean as the one-pass mean.
    total: int | float = 0 if np.issubdtype(hu.dtype, np.integer) else 0.0
    count = 0
    for part in chunks(hu):
        values = hu[part][mask[part]]
        release(hu)
        total += int(values.sum(dtype=np.int64)) if isinstance(total, int) else float(values.sum(dtype=np.float64))
        count += values.size
    return None if count == 0 else float(total / count)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """(N, 3) (z, y, x) indices of mask voxels with at least one 6-neighbour outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    interior = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
    surface = padded & ~interior
    return np.argwhere(surface) - 1


def _zyx_to_mm(zyx: np.ndarray, affine: np.ndarray, offset_zyx: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    a = np.asarray(affine, float)
    ijk = (np.asarray(zyx, float) + np.asarray(offset_zyx, float))[:, ::-1]
    mm: np.ndarray = ijk @ a[:3, :3].T + a[:3, 3]
    return mm


def _max_pairwise_distance(points: np.ndarray, chunk: int = 512) -> float:
    """Exact farthest-pair distance; memory O(chunk * n)."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts - pts.mean(axis=0)  # better conditioned |a|^2 + |b|^2 - 2ab
    sq = np.einsum("ij,ij->i", pts, pts)
    best = 0.0
    for start in range(0, len(pts), chunk):
        block = pts[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, start:] - 2.0 * (block @ pts[start:].T)
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    if len(points) <= 64:
        return points
    try:
        hull: np.ndarray = points[ConvexHull(points).vertices]
        return hull
    except QhullError:
        pass
    try:  # flat or linear sets: joggle (vertices are still input points)
        joggled: np.ndarray = points[ConvexHull(points, qhull_options="QJ").vertices]
        return joggled
    except QhullError:
        return points


def max_diameter_mm(mask: np.ndarray, affine: np.ndarray, offset_zyx: tuple[int, ...] = (0, 0, 0)) -> float | None:
    """Longest distance (mm) between two surface-voxel centres of ``mask`` ((z, y, x) array).

    ``offset_zyx``: index of ``mask[0, 0, 0]`` in the full grid that ``affine`` describes (for
    cropped masks). None for an empty mask.
    """
    zyx = surface_voxels(mask)
    if len(zyx) == 0:
        return None
    points = np.unique(_zyx_to_mm(zyx, affine, offset_zyx), axis=0)
    if len(points) == 1:
        return 0.0
    return _max_pairwise_distance(_hull_vertices(points))


def measure_labels(
    labels: np.ndarray,
    hu: np.ndarray | None,
    affine: np.ndarray,
    *,
    diameter_labels: set[int] | frozenset[int] = frozenset(),
    only: set[int] | None = None,
) -> dict[int, LabelMeasurement]:
    """Volume, mean HU and (for ``diameter_labels``) the longest diameter of every label > 0.

    ``labels``: (z, y, x) non-negative integers; ``hu``: the CT on the same grid (or None);
    ``affine``: LPS (or any world) affine of index (x, y, z) = (column, row, slice).
    One pass for bounding boxes, then work on each label's cropped box only.
    """
    labels = np.asarray(labels)
    if hu is not None and hu.shape != labels.shape:
        raise ValueError(f"CT shape {hu.shape} != label shape {labels.shape}")
    if labels.size == 0:
        return {}
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    boxes = ndimage.find_objects(labels)
    vvol = voxel_volume_mm3(affine)
    out: dict[int, LabelMeasurement] = {}
    for value, box in enumerate(boxes, start=1):
        if box is None or (only is not None and value not in only):
            continue
        sub = labels[box] == value
        count = int(np.count_nonzero(sub))
        if count == 0:
            continue
        mhu = mean_hu(hu[box], sub) if hu is not None else None
        diam = None
        if value in diameter_labels:
            diam = max_diameter_mm(sub, affine, offset_zyx=tuple(s.start for s in box))
        out[value] = LabelMeasurement(value, count, count * vvol / 1000.0, mhu, diam, box)
    return out
