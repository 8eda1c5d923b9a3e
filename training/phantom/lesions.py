"""Tumours: one appearance model per type, plus variants that any type may draw from its own
random stream: reaching outside the organ, iso-attenuating (texture change only) and
rim-enhancing.

Seen types (liver tumour, kidney tumour, kidney cyst) and held-out types (pancreas tumour,
colon tumour, lung nodule) keep separate tissues and size ranges; a variant changes a lesion
relative to its own type's appearance (the rim enhances above the type's own lesion HU, the iso
variant copies the host organ), so no held-out type borrows a seen type's look.
Every random number of a type is drawn whether or not the type is placed, so the tumour set
given to the generator does not change the rest of the phantom.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Canvas, Overlay, ellipsoid, sub_seed
from .tissues import T

TUMOR_TYPES: dict[str, dict] = {
    "liver_tumor": {"cls": "Liver Tumor", "parents": ("Liver",)},
    "kidney_tumor": {"cls": "Kidney Tumor", "parents": ("Right Kidney", "Left Kidney")},
    "kidney_cyst": {"cls": "Kidney Cyst", "parents": ("Right Kidney", "Left Kidney")},
    "pancreas_tumor": {"cls": "Pancreas Tumor", "parents": ("Pancreas",)},
    "colon_tumor": {"cls": "Colon Tumor", "parents": ("Colon",)},
    "lung_tumor": {"cls": "Lung Tumor", "parents": ("Right Lung", "Left Lung")},
}
SEEN_TUMORS: tuple[str, ...] = ("liver_tumor", "kidney_tumor", "kidney_cyst")
UNSEEN_TUMORS: tuple[str, ...] = ("pancreas_tumor", "colon_tumor", "lung_tumor")

_RADIUS = {"liver_tumor": (7, 22), "kidney_tumor": (10, 22), "kidney_cyst": (6, 14),
           "pancreas_tumor": (8, 15), "colon_tumor": (10, 17), "lung_tumor": (6, 15)}
_TISSUE = {"liver_tumor": "liver_lesion", "kidney_tumor": "kidney_tumor", "kidney_cyst": "cyst",
           "pancreas_tumor": "pancreas_lesion", "colon_tumor": "colon_lesion", "lung_tumor": "lung_nodule"}
# Host tissue an iso-attenuating lesion copies (lung: a subtle ground-glass nodule instead).
_ISO_HOST = {"liver_tumor": "liver", "kidney_tumor": "kidney_cortex", "pancreas_tumor": "pancreas",
             "colon_tumor": "gi_wall", "lung_tumor": "ground_glass"}
# Tissue a lesion may grow into when it reaches outside its organ (never bone, air or vessels).
_OUTSIDE = ("visceral_fat", "fat", "muscle", "lung", "lung_vessel", "fluid")
VARIANTS: tuple[str, ...] = ("outside", "iso", "rim")


def paint_tumors(cv: Canvas, seed: int, types: list[str], prob: float, phase: str) -> list[str]:
    """Place each requested type with probability prob. Every type draws from its own stream
    (seed, type): its lesions do not depend on which other types were requested."""
    placed = []
    cv.boxes = ndimage.find_objects(cv.label)
    for t in types:
        rng = np.random.default_rng([int(seed), 0x7E55, list(TUMOR_TYPES).index(t)])
        present = rng.random() < prob
        n = 1 + int(rng.random() < 0.4) if t == "liver_tumor" else 1
        if not present:
            continue
        spec = TUMOR_TYPES[t]
        parents = [cv.idx[p] for p in spec["parents"]]
        ok = False
        for _ in range(n):
            ok |= one_tumor(cv, rng, t, spec, parents, phase)
        if ok:
            placed.append(t)
    return placed


def one_tumor(cv: Canvas, rng, t: str, spec: dict, parents: list[int], phase: str) -> bool:
    sp = np.array(cv.grid.spacing)
    # all draws first (the lesion's look must not depend on what the grid happens to contain)
    v = rng.random(4)
    outside = v[0] < 0.2
    iso = v[1] < 0.15 and t != "kidney_cyst"
    rim = v[2] < 0.2 and t != "kidney_cyst"
    sub_type = v[3] < 0.5  # liver: classic rim-enhancing metastasis; kidney: necrotic centre
    rad = rng.uniform(*_RADIUS[t])
    radii = rad * rng.uniform(0.8, 1.2, 3)
    pick = rng.random()
    tex_seed, tex_amp, tex_cell, tex_shift = sub_seed(rng), rng.uniform(12, 25), rng.uniform(3, 5), rng.uniform(-8, 8)
    rim_gain = {"non_contrast": 0.0, "arterial": rng.uniform(40, 80), "portal_venous": rng.uniform(45, 85)}[phase]
    rim_mm = rng.uniform(2.5, 4.5)

    boxes = [cv.boxes[p - 1] for p in parents if p - 1 < len(cv.boxes) and cv.boxes[p - 1] is not None]
    if not boxes:
        return False
    box = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
    par = np.isin(cv.label[box], parents)
    if not par.any():
        return False
    if outside:  # centre on the organ's surface: about half the lesion bulges out
        core = par & ~ndimage.binary_erosion(par)
    else:  # centre away from the surface: the lesion is mostly surrounded by organ
        core = ndimage.binary_erosion(par, iterations=2) if par.sum() > 200 else par
    pts = np.argwhere(core if core.any() else par)
    i, j, k = pts[min(int(pick * len(pts)), len(pts) - 1)] + [b.start for b in box]
    centre = np.array([cv.grid.coords(0, slice(i, i + 1))[0], cv.grid.coords(1, slice(j, j + 1))[0],
                       cv.grid.coords(2, slice(k, k + 1))[0]])
    sl, f = ellipsoid(cv, rng, centre, radii, 30, 0.05 if t == "kidney_cyst" else 0.2)
    if sl is None:
        return False
    m = f < 1
    host = np.isin(cv.label[sl], parents)
    if outside:
        free = (cv.label[sl] == 0) & cv.inside[sl] & np.isin(cv.tissue[sl], [T[x] for x in _OUTSIDE])
        m &= host | free
    else:
        m &= host
    if m.sum() < 2:
        return False
    cv.label[sl][m] = cv.idx[spec["cls"]]
    cv.tissue[sl][m] = T[_ISO_HOST[t] if iso else _TISSUE[t]]
    kinds = [k for k, on in (("outside", outside), ("iso", iso)) if on]
    if iso:  # same mean as the host organ: only the texture gives it away
        cv.overlays.append(Overlay(sl, m, tex_seed, tex_cell, tex_amp, tex_shift))
    if sub_type and t in ("liver_tumor", "kidney_tumor") and not iso:
        inner = ndimage.binary_erosion(m, iterations=max(1, int(round(3 / sp[0]))))
        if inner.any():
            if t == "liver_tumor":
                cv.tissue[sl][m & ~inner] = T["lesion_rim"]
                kinds.append("rim")
            else:
                cv.tissue[sl][inner] = T["necrosis"]
                kinds.append("necrotic")
    elif rim and rim_gain > 0:
        inner = ndimage.binary_erosion(m, iterations=max(1, int(round(rim_mm / sp[0]))))
        ring = m & ~inner
        if ring.any() and inner.any():
            cv.overlays.append(Overlay(sl, ring, tex_seed + 1, 4.0, 0.0, rim_gain))
            kinds.append("rim")
    cv.notes.setdefault("lesions", []).append({
        "type": t, "variants": kinds, "voxels": int(m.sum()),
        "centre": tuple(round(float(v), 1) for v in centre)})
    return True
