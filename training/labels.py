"""Raw dataset labels -> catalog labels, and the tumour -> parent-organ assignment.

A case's label becomes two uint8 volumes on the image grid:
  class map   1-based catalog index per voxel (0 = background)
  parent map  for tumour voxels, the catalog index of their parent organ; for voxels of a
              synthetic exposure lesion (class 0), the host organ (training/exposure.py)
The training target is built from these two after augmentation (see losses.py), which keeps
cached samples and spatial augmentation at two channels. Organ channels learn organ *tissue*:
a tumour voxel is a positive of its tumour class only and a negative of its parent organ; the
parent map serves the evaluation's parent envelope and the synthetic-lesion encoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from model.catalog import Catalog

from .registry import DatasetSpec


class LabelError(ValueError):
    pass


def read_nifti(path: str | Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj).astype(dtype, copy=False), np.asarray(img.affine, np.float64)


def read_raw_label(path: str | Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw label volume (int32) and affine. In masks mode the folder's masks are merged with
    value i for the i-th registry mask (later masks win where masks overlap); absent mask files
    are treated as empty."""
    path = Path(path)
    if not spec.uses_masks:
        arr, affine = read_nifti(path, np.float32)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise LabelError(f"{path}: label must be 3-D, got shape {arr.shape}")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise LabelError(f"{path}: label has non-integer values")
        return rounded.astype(np.int32), affine
    if not path.is_dir():
        raise LabelError(f"{path}: expected a folder of masks for dataset {spec.key!r}")
    out = None
    affine = None
    for value, stem in enumerate(spec.masks, start=1):
        f = next((p for p in (path / f"{stem}.nii.gz", path / f"{stem}.nii") if p.exists()), None)
        if f is None:
            continue
        m, aff = read_nifti(f, np.float32)
        if out is None:
            out, affine = np.zeros(m.shape, np.int32), aff
        elif m.shape != out.shape:
            raise LabelError(f"{f}: shape {m.shape} differs from the other masks {out.shape}")
        out[m > 0.5] = value
    if out is None:
        raise LabelError(f"{path}: none of the registry masks exist")
    return out, affine


def body_midline_x(image_hu: np.ndarray | None, affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """RAS x (mm) of the body's left-right centre: centroid of the largest HU > -500 blob.

    Computed on a 4x subsampled grid (enough for a plane position). Without an image, the
    centre of the field of view.
    """
    centre = np.array([(n - 1) / 2 for n in shape] + [1.0])
    if image_hu is not None:
        sub = image_hu[::4, ::4, ::4] > -500
        lab, n = ndimage.label(sub)
        if n:
            sizes = np.bincount(lab.ravel())[1:]
            c = ndimage.center_of_mass(lab == (np.argmax(sizes) + 1))
            centre = np.array([ci * 4 for ci in c] + [1.0])
    return float((affine @ centre)[0])


def _world_x(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RAS x (mm) of every voxel."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    a = affine.astype(np.float32)
    return a[0, 0] * i[:, None, None] + a[0, 1] * j[None, :, None] + a[0, 2] * k[None, None, :] + a[0, 3]


def _split_lr(mask: np.ndarray, affine: np.ndarray, midline: float) -> np.ndarray:
    """Bool 'is right' per voxel of a bilateral mask: whole components by their centroid side;
    a component with >= 10 % of its voxels on each side is cut at the midline plane."""
    right = np.zeros(mask.shape, bool)
    lab, n = ndimage.label(mask)
    if not n:
        return right
    wx = _world_x(affine, mask.shape)
    for c, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == c
        side = wx[sl] > midline
        frac_right = float(side[comp].mean())
        if 0.1 <= frac_right <= 0.9:
            right[sl] |= comp & side
        elif frac_right > 0.5:
            right[sl] |= comp
    return right


def map_labels(
    raw: np.ndarray, spec: DatasetSpec, catalog: Catalog, affine: np.ndarray, image_hu: np.ndarray | None = None
) -> np.ndarray:
    """Raw label values -> catalog class map (uint8, 1-based). Unknown values raise LabelError."""
    vmap = spec.value_map()
    values = np.unique(raw)
    unknown = [int(v) for v in values if v != 0 and int(v) not in vmap]
    if unknown and not spec.unmapped_background:
        raise LabelError(f"dataset {spec.key!r}: label values {unknown} are not in the registry mapping")
    out = np.zeros(raw.shape, np.uint8)
    midline = None
    for v in values:
        v = int(v)
        if v == 0 or v not in vmap:
            continue
        t = vmap[v]
        m = raw == v
        if t.split:
            if midline is None:
                midline = body_midline_x(image_hu, affine, raw.shape)
            right = _split_lr(m, affine, midline)
            out[m & right] = catalog.by_name(t.split[0]).index
            out[m & ~right] = catalog.by_name(t.split[1]).index
        elif t.cls:
            out[m] = catalog.by_name(t.cls).index
    return out


def parent_map(
    classes: np.ndarray, catalog: Catalog, affine: np.ndarray, image_hu: np.ndarray | None = None
) -> np.ndarray:
    """For tumour voxels, the 1-based index of the organ they also count for (0 elsewhere).

    One parent: that organ. A right/left pair (kidneys, lungs, adrenals): the side of the body
    midline the voxel lies on. Other multi-parent tumours (Hepatic Vessel Tumor: Liver, Hepatic
    Vessel): the first parent, the organ the lesion lies in.
    """
    out = np.zeros(classes.shape, np.uint8)
    present = [int(v) for v in np.unique(classes) if v]
    midline = None
    wx = None
    for v in present:
        entry = catalog[v - 1]
        if not entry.is_tumor or not entry.parents:
            continue
        m = classes == v
        parents = [catalog.by_name(p) for p in entry.parents]
        lat = {p.laterality: p for p in parents}
        if len(parents) == 2 and set(lat) == {"left", "right"}:
            if midline is None:
                midline = body_midline_x(image_hu, affine, classes.shape)
                wx = _world_x(affine, classes.shape)
            right = wx > midline
            out[m & right] = lat["right"].index
            out[m & ~right] = lat["left"].index
        else:
            out[m] = parents[0].index
    return out


def load_case_labels(
    label_path: str | Path, spec: DatasetSpec, catalog: Catalog, affine_image: np.ndarray | None = None,
    image_hu: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and map a label file: (class map, parent map, label affine)."""
    raw, affine = read_raw_label(label_path, spec)
    classes = map_labels(raw, spec, catalog, affine, image_hu)
    return classes, parent_map(classes, catalog, affine, image_hu), affine
