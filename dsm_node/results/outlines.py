"""Outlines of a mask on one image: for the SR's planar companion groups and the key images.

An outline is the boundary of the largest 8-connected part of the mask on a slice, traced
with marching squares (contourpy, which matplotlib ships) at level 0.5 over the pixel centres,
so it runs half-way between inside and outside pixel centres. Points are (row, column) pixel
indices; collinear points are dropped, the polygon is closed (first point repeated last).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = ndimage.generate_binary_structure(2, 2)


def largest_part(mask2d: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D mask, holes filled."""
    comps, n = ndimage.label(mask2d, structure=_EIGHT)
    if n == 0:
        return np.zeros_like(mask2d, dtype=bool)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    filled: np.ndarray = ndimage.binary_fill_holes(comps == int(sizes.argmax()))
    return filled


def outline(mask2d: np.ndarray) -> np.ndarray:
    """(N, 2) closed polygon (row, column) around the largest part of ``mask2d``; empty if none."""
    import contourpy

    part = largest_part(mask2d)
    if not part.any():
        return np.zeros((0, 2))
    rows, cols = np.nonzero(part)
    r0, r1, c0, c1 = rows.min() - 1, rows.max() + 2, cols.min() - 1, cols.max() + 2
    crop = np.zeros((r1 - r0, c1 - c0), np.float32)
    crop[rows - r0, cols - c0] = 1.0
    gen = contourpy.contour_generator(z=crop, line_type=contourpy.LineType.Separate, corner_mask=False)
    lines = [np.asarray(line) for line in gen.lines(0.5)]
    if not lines:
        return np.zeros((0, 2))
    xy = max(lines, key=len)  # the outer boundary is the longest line (holes were filled)
    pts = np.stack([xy[:, 1] + r0, xy[:, 0] + c0], axis=1)
    return _closed(_drop_collinear(pts))


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) < 3:
        return pts
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    corners: np.ndarray = pts[np.abs(cross) > 1e-9]
    return corners


def _closed(pts: np.ndarray) -> np.ndarray:
    return np.vstack([pts, pts[:1]]) if len(pts) else pts


def largest_slice(mask3d: np.ndarray) -> int:
    """Index (axis 0) of the slice where the mask has the most pixels (lowest index on ties)."""
    return int(np.asarray(mask3d).reshape(len(mask3d), -1).sum(axis=1).argmax())
