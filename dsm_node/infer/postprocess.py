"""Post-processing of class probability maps, as the model spec prescribes.

Per class: threshold (catalog, default 0.5); organs keep their largest connected component;
a tumour is kept only inside its dilated parent organ(s); components below the class's minimum
volume are dropped. Runs on the model grid (coarse, so connected components are cheap); the
decisions are carried to the source grid as gates on the upsampled probabilities.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

_STRUCT = ndimage.generate_binary_structure(3, 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=_STRUCT)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_STRUCT)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    if voxels <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_STRUCT, iterations=voxels)


def postprocess(
    probs: np.ndarray,
    entries: Sequence,  # catalog ClassEntry-like: name, kind, parents, threshold, min_volume_ml
    voxel_ml: float,
    parent_margin_voxels: int = 2,
) -> np.ndarray:
    """Boolean masks (C, X, Y, Z) after the spec's rules, from probabilities (C, X, Y, Z)."""
    masks = np.zeros(probs.shape, dtype=bool)
    index = {e.name: i for i, e in enumerate(entries)}
    for i, e in enumerate(entries):
        if e.kind != "organ":
            continue
        m = probs[i] >= e.threshold
        if m.any():
            m = largest_component(m)
            m = drop_small(m, int(np.ceil(e.min_volume_ml / voxel_ml)))
        masks[i] = m
    for i, e in enumerate(entries):
        if e.kind == "organ":
            continue
        m = probs[i] >= e.threshold
        if not m.any():
            continue
        parents = [index[p] for p in e.parents if p in index]
        if parents:
            region = np.zeros(m.shape, dtype=bool)
            for p in parents:
                region |= masks[p]
            m &= dilate(region, parent_margin_voxels)
        masks[i] = drop_small(m, int(np.ceil(e.min_volume_ml / voxel_ml)))
    return masks
