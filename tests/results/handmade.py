"""Hand-made tumours inside their organs, for tests that need lesions on a real CT.

``with_tumours(labels, spacing)`` puts, into a (i, j, k) label volume of catalog indices:
a Stomach Tumor ball (radius ``r_stomach`` mm) at the stomach voxel deepest inside the stomach,
a Lung Tumor ball in the right lung likewise, a second, smaller Lung Tumor ball in the left lung,
and a 2-voxel Lung Tumor fragment (below any sensible lesion minimum). Each ball lies inside its
organ (radius below the organ's depth there), so the organ encloses it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

STOMACH, RIGHT_LUNG, LEFT_LUNG = 7, 16, 17
STOMACH_TUMOR, LUNG_TUMOR = 32, 41


def _ball(labels: np.ndarray, spacing, organ: int, value: int, radius_mm: float) -> np.ndarray:
    inside = labels == organ
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    if depth.max() <= radius_mm + max(spacing):
        raise ValueError(f"organ {organ} is too thin for a {radius_mm} mm ball")
    centre = np.unravel_index(int(depth.argmax()), depth.shape)
    grid = np.indices(labels.shape, dtype=np.float32)
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    ball = (d2 <= radius_mm ** 2) & inside
    labels[ball] = value
    return np.array(centre)


def with_tumours(labels: np.ndarray, spacing, r_stomach: float = 14.0, r_lung: float = 11.0,
                 r_lung2: float = 7.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    out = labels.copy()
    centres = {
        "Stomach Tumor": _ball(out, spacing, STOMACH, STOMACH_TUMOR, r_stomach),
        "Lung Tumor 1": _ball(out, spacing, RIGHT_LUNG, LUNG_TUMOR, r_lung),
        "Lung Tumor 2": _ball(out, spacing, LEFT_LUNG, LUNG_TUMOR, r_lung2),
    }
    # A 2-voxel fragment in the right lung, away from the ball: not a lesion.
    lung = np.argwhere(out == RIGHT_LUNG)
    far = lung[np.argmax(((lung - centres["Lung Tumor 1"]) ** 2).sum(1))]
    depth = ndimage.distance_transform_edt(out == RIGHT_LUNG)
    candidates = np.argwhere(depth >= 3)
    spot = candidates[np.argmin(((candidates - far) ** 2).sum(1))]
    out[tuple(spot)] = LUNG_TUMOR
    out[spot[0], spot[1], spot[2] + (1 if spot[2] + 1 < out.shape[2] else -1)] = LUNG_TUMOR
    return out, centres


def write_with_tumours(source_nifti, out_path) -> dict[str, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(source_nifti))
    labels = np.asarray(img.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    out, centres = with_tumours(labels, spacing)
    nib.save(nib.Nifti1Image(out, img.affine, img.header), str(out_path))
    return centres
