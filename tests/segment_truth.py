"""What each SEG segment must hold, computed independently of dsm_node.results (used by the
result tests and the viewer tests as their truth for overlapping organ/tumour segments)."""
from __future__ import annotations

import numpy as np


def expected_segment_masks(labels: np.ndarray, catalog, organs_include_tumors: bool = False) -> dict[int, np.ndarray]:
    """{catalog index: mask} of what each segment must hold (docs/results.md), computed here
    on the whole volume: an organ that is a tumour class's parent = its voxels + the 26-connected
    tumour components whose one-voxel shell touches it most among their parents, with enclosed
    cavities filled; every other class = its own voxels."""
    from scipy import ndimage

    present = [int(v) for v in np.unique(labels) if v]
    out = {v: labels == v for v in present}
    if not organs_include_tumors:
        return out
    by_name = {e.name: e.index for e in catalog}
    parent_of_some = {by_name[p] for e in catalog if e.kind == "tumor" for p in e.parents}
    full26 = np.ones((3, 3, 3), bool)
    extra = {v: np.zeros(labels.shape, bool) for v in present}
    for e in catalog:
        if e.kind != "tumor" or e.index not in present:
            continue
        parents = [by_name[p] for p in e.parents if by_name[p] in present]
        comps, n = ndimage.label(labels == e.index, structure=full26)
        for k in range(1, n + 1):
            comp = comps == k
            shell = ndimage.binary_dilation(comp, structure=full26) & ~comp
            contact = {p: int((labels[shell] == p).sum()) for p in parents}
            if contact and max(contact.values()) > 0:
                best = max(parents, key=lambda p: (contact[p], -p))
                extra[best] |= comp
    for v in present:
        if v in parent_of_some:
            out[v] = ndimage.binary_fill_holes(out[v] | extra[v])
    return out
