"""Bring a NIfTI label image onto a :class:`Volume`'s array layout, refusing anything off-grid."""
from __future__ import annotations

import os

import numpy as np

from .assembly import Volume, VolumeError
from .geometry import lps_to_ras


class GridMismatchError(VolumeError):
    """The label image is not on the source grid (different shape, spacing, origin or rotation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "grid")


def label_image_to_volume_grid(img, volume: Volume, *, tol_voxel: float = 0.01, partial: bool = False) -> np.ndarray:
    """The labels of ``img`` (a nibabel image) as an integer array shaped like ``volume.hu``.

    The NIfTI may store the grid with its axes permuted or flipped (e.g. after
    ``as_closest_canonical``); anything else - other spacing, origin, rotation or shape - raises
    :class:`GridMismatchError`. Affines are compared in RAS after converting the volume's LPS
    affine: M = inv(A_volume_ras) @ A_nifti must be a signed permutation with integer
    translation (within ``tol_voxel`` voxels).
    ``partial``: the image may cover only a box of the CT grid (as dcmqi writes SEG frames
    back); voxels outside it are 0.
    """
    affine = np.asarray(img.affine, dtype=float)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise GridMismatchError(f"label image has shape {tuple(img.shape)}; a 3-D label map is expected")
    vol_ijk = (volume.shape[2], volume.shape[1], volume.shape[0])
    m = np.linalg.solve(lps_to_ras(volume.affine_lps), affine)
    rot = m[:3, :3]
    perm = np.rint(rot)
    ok = (np.max(np.abs(rot - perm)) <= tol_voxel
          and np.all(np.sum(np.abs(perm), axis=0) == 1) and np.all(np.sum(np.abs(perm), axis=1) == 1))
    if not ok:
        raise GridMismatchError(
            "label image is not on the source grid: its voxel axes are not the CT's axes "
            f"(label affine RAS\n{np.round(affine, 4)}\nCT affine RAS\n{np.round(lps_to_ras(volume.affine_lps), 4)})")
    # label voxel v maps to CT voxel u = perm @ v + t
    t = m[:3, 3]
    if np.max(np.abs(t - np.rint(t))) > tol_voxel:
        raise GridMismatchError(f"label image origin is off the CT grid by {np.round(t - np.rint(t), 4).tolist()} voxels")
    t = np.rint(t).astype(int)
    data = np.asanyarray(img.dataobj)
    data = data.reshape(shape)
    # Map label axes to CT axes.
    axis_for = [int(np.nonzero(perm[r])[0][0]) for r in range(3)]  # CT axis r <- label axis axis_for[r]
    sign = [int(perm[r, axis_for[r]]) for r in range(3)]
    mapped_shape = tuple(shape[axis_for[r]] for r in range(3))
    if not partial and mapped_shape != vol_ijk:
        raise GridMismatchError(f"label image has {mapped_shape} voxels (i, j, k) on the CT axes, the CT has {vol_ijk}")
    starts = []
    for r in range(3):
        lo = t[r] if sign[r] > 0 else t[r] - (mapped_shape[r] - 1)
        if (not partial and lo != 0) or lo < 0 or lo + mapped_shape[r] > vol_ijk[r]:
            raise GridMismatchError(f"label image is shifted by {lo} voxels along CT axis {'ijk'[r]} "
                                    f"({mapped_shape[r]} voxels on a CT axis of {vol_ijk[r]})")
        starts.append(int(lo))
    arr = np.transpose(data, axis_for)
    for r in range(3):
        if sign[r] < 0:
            arr = np.flip(arr, axis=r)
    if partial and (mapped_shape != vol_ijk):
        full = np.zeros(vol_ijk, dtype=arr.dtype)
        full[starts[0]:starts[0] + mapped_shape[0], starts[1]:starts[1] + mapped_shape[1],
             starts[2]:starts[2] + mapped_shape[2]] = arr
        arr = full
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        else:
            rounded = np.rint(arr)
            if not np.array_equal(rounded, arr):
                raise GridMismatchError("label image has non-integer values; a label map is expected")
            arr = rounded
    if arr.min() < 0:
        raise GridMismatchError("label image has negative values")
    out_dtype = np.uint8 if arr.max() < 256 else np.uint16
    return np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(out_dtype, copy=False)


def load_labels(path: str | os.PathLike, volume: Volume, *, tol_voxel: float = 0.01) -> np.ndarray:
    """Read a NIfTI label map and return it on ``volume``'s grid, (z, y, x) integers."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise GridMismatchError(f"{path}: not a readable NIfTI image ({exc})") from None
    return label_image_to_volume_grid(img, volume, tol_voxel=tol_voxel)
