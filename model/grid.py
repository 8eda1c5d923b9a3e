"""From a volume's own grid to the model's grid and back, in index space.

The input is an array with axes (i, j, k) and the 4x4 affine that maps (i, j, k) to RAS
millimetres (the NIfTI convention; a DICOM series is (column, row, slice) with its LPS affine
turned into RAS). Axes are permuted/flipped to the closest RAS orientation (as MONAI's
``Orientation("RAS")`` in training) and resampled in *index space* to the model spacing, so the
way back is the exact inverse and outputs land on the source voxels (no world-space
interpolation that could shift a mask by a fraction of a slice).
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class GridMap:
    """How a source array maps to the model grid (and back)."""

    source_shape: tuple[int, int, int]  # (i, j, k)
    ornt: np.ndarray  # nibabel orientation transform from the source axes to RAS
    oriented_shape: tuple[int, int, int]  # (R, A, S) axes after reorientation
    spacing: tuple[float, float, float]  # mm per voxel along the oriented axes
    model_shape: tuple[int, int, int]  # after resampling to the model spacing

    def to_oriented(self, ijk: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(ijk, self.ornt))

    def from_oriented(self, arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(arr, _inverse(self.ornt)))

    def oriented_view(self, ijk: np.ndarray) -> np.ndarray:
        """``ijk`` seen in (R, A, S) axis order without a copy (flips and a transpose); writing
        into the view writes into ``ijk``."""
        return nib.orientations.apply_orientation(ijk, self.ornt)

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        return tuple(s * n / m for s, n, m in zip(self.spacing, self.oriented_shape, self.model_shape))  # type: ignore[return-value]


def _inverse(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt`` (source axis a -> target axis t, flip f)."""
    inv = np.zeros_like(ornt)
    for a, (t, f) in enumerate(ornt):
        inv[int(t)] = (a, f)
    return inv


def plan(source_shape: tuple[int, int, int], affine_ras: np.ndarray, target_spacing: tuple[float, float, float]) -> GridMap:
    """The map of an (i, j, k) array with this RAS affine onto a grid of ``target_spacing`` mm."""
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine_ras)
    voxel = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))  # mm per i, j, k step
    order = ornt[:, 0].astype(int)  # source axis a goes to RAS axis order[a]
    oriented_shape = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for a in range(3):
        oriented_shape[order[a]] = int(source_shape[a])
        spacing[order[a]] = float(voxel[a])
    model_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(oriented_shape, spacing, target_spacing))
    return GridMap(tuple(int(n) for n in source_shape), ornt, tuple(oriented_shape), tuple(spacing), model_shape)  # type: ignore[arg-type]


def resample(arr: torch.Tensor, shape: tuple[int, ...], mode: str = "trilinear") -> torch.Tensor:
    """Resample a (C, X, Y, Z) tensor to ``shape`` in index space (align_corners=False)."""
    if tuple(arr.shape[-3:]) == tuple(shape):
        return arr
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(arr[None], size=tuple(shape), mode=mode, **kwargs)[0]


def window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """HU window scaled to [0, 1] and clipped (training: ScaleIntensityRange with clip)."""
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0, dtype=np.float32)


def foreground_box(image01: np.ndarray, margin: int, threshold: float = 0.0) -> tuple[slice, slice, slice]:
    """Bounding box of the body (window value above ``threshold``) with a margin in voxels, as
    training's CropForeground; the whole array when nothing is above the threshold."""
    mask = image01 > threshold
    if not mask.any():
        return tuple(slice(0, n) for n in image01.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, hits[0] - margin), min(image01.shape[axis], hits[-1] + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]
