"""Hand-made tumours inside their organs, for tests that need lesions on a real CT (or a phantom).

``with_tumors(labels, spacing, catalog)`` takes a (i, j, k) or (z, y, x) label volume of catalog
indices and, in two organs present that are the parent of a catalog tumour class and thick
enough, puts balls of that tumour class at the voxels deepest inside them:

* organ A (the largest): a ball of radius ``r_big`` mm and, far from it, one of ``r_small`` mm
  (two lesions of one class, numbered by size);
* organ B (the largest with another tumour class): a ball of ``r_mid`` mm;
* a 2-voxel fragment of organ A's tumour class (below any sensible lesion minimum).

Every ball lies inside its organ (radius below the organ's depth there), so the organ encloses
it. Returns the new volume and, per lesion, its class index, centre (voxel index) and radius.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Made:
    tumor: int  # catalog index of the tumour class
    organ: int
    centre: tuple[int, int, int]  # voxel index in the label volume
    radius_mm: float


def _ball_mask(shape, centre, radius_mm, spacing) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius_mm ** 2


def _dist_mm(shape, centre, spacing) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))


def _depth(labels: np.ndarray, organ: int, spacing) -> np.ndarray:
    """Distance (mm) of each organ voxel to the organ's outside, computed in its bounding box."""
    inside = labels == organ
    box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in ndimage.find_objects(inside.astype(np.uint8))[0])
    depth = np.zeros(labels.shape, np.float32)
    depth[box] = ndimage.distance_transform_edt(inside[box], sampling=spacing)
    return depth


def with_tumors(labels: np.ndarray, spacing, catalog, r_big: float = 14.0, r_mid: float = 11.0,
                 r_small: float = 7.0) -> tuple[np.ndarray, list[Made]]:
    out = labels.copy()
    spacing = tuple(float(s) for s in spacing)
    tumor_of = {}
    for e in catalog:
        if e.kind == "tumor":
            for p in e.parents:
                tumor_of.setdefault(p, e.index)
    present = [int(v) for v in np.unique(labels) if v]
    organs = sorted((v for v in present if catalog[v - 1].name in tumor_of),
                    key=lambda v: -int((labels == v).sum()))
    chosen: list[tuple[int, np.ndarray]] = []
    for organ in organs:  # the largest organ, then the largest one with another tumour class
        if chosen and tumor_of[catalog[organ - 1].name] == tumor_of[catalog[chosen[0][0] - 1].name]:
            continue
        depth = _depth(labels, organ, spacing)
        if depth.max() > min(r_big, r_mid) + 2 * max(spacing):
            chosen.append((organ, depth))
        if len(chosen) == 2:
            break
    if len(chosen) < 2:
        raise ValueError("need two tumour-parent organs with different tumour classes, thick enough")
    made: list[Made] = []

    def put(organ: int, depth: np.ndarray, radius: float, away_from=None) -> Made | None:
        score = np.where(depth > radius + 2 * max(spacing), depth, 0)
        if away_from is not None:
            score[_dist_mm(labels.shape, away_from.centre, spacing) < away_from.radius_mm + radius + 10] = 0
        if score.max() <= 0:
            return None
        centre = np.unravel_index(int(score.argmax()), score.shape)
        tumor = tumor_of[catalog[organ - 1].name]
        out[(_dist_mm(labels.shape, centre, spacing) <= radius) & (labels == organ)] = tumor
        made.append(Made(tumor, organ, tuple(int(c) for c in centre), radius))
        return made[-1]

    (a, depth_a), (b, depth_b) = chosen
    big = put(a, depth_a, r_big)
    put(b, depth_b, r_mid)
    small = put(a, depth_a, r_small, away_from=big)
    if small is not None:
        # a 2-voxel fragment near organ A's edge, far from its balls: not a lesion
        score = np.where(depth_a >= 2 * max(spacing), 1.0 / np.maximum(depth_a, 1e-3), 0)
        for m in (big, small):
            score[_dist_mm(labels.shape, m.centre, spacing) < m.radius_mm + 10] = 0
        spot = np.unravel_index(int(score.argmax()), score.shape)
        out[spot] = small.tumor
        nb = list(spot)
        nb[0] = nb[0] + 1 if nb[0] + 1 < labels.shape[0] and labels[tuple([nb[0] + 1, *nb[1:]])] == a else nb[0] - 1
        out[tuple(nb)] = small.tumor
    return out, made


def write_with_tumors(source_nifti, out_path, catalog) -> list[Made]:
    import nibabel as nib

    img = nib.load(str(source_nifti))
    labels = np.asarray(img.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    out, made = with_tumors(labels, spacing, catalog)
    nib.save(nib.Nifti1Image(out, img.affine, img.header), str(out_path))
    return made
