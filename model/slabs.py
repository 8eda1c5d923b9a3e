"""Trilinear resampling between a large grid and the model grid without whole-volume copies,
bit-identical to ``grid.resample`` (one ``F.interpolate(..., "trilinear", align_corners=False)``).

Why it is exact: PyTorch's trilinear kernel evaluates each output voxel as a linear
interpolation along the LAST axis, then along the middle axis of those values, then along the
first axis, each stage rounded to float32 like the 1-D ``linear`` kernel on whole lines. So three
1-D passes in that order give the same float32 values, and since lines are independent, each
pass may run on any subset of lines (chunks, or only the lines that hold nonzero values) as long
as every line it interpolates is whole. tests/model/test_slabs.py checks this voxel for voxel
against ``grid.resample`` (odd sizes, up and down, flipped and permuted views).

* :func:`downsample`: a source-sized array of any dtype and strides (an int16 HU view) to the
  model grid; float32 copies exist only for a chunk of planes at a time.
* :class:`Upsampled`: a model-grid map on the source grid, served in slabs along the last axis;
  the first pass is kept once for the lines holding nonzero values (a class's bounding box),
  the other two run per slab.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Voxels of float32 work per chunk/slab (16 MiB): bounded temporaries whatever the study size.
SLAB_VOXELS = 1 << 22


def linear_pass(values: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """1-D linear resampling of ``axis`` to ``size`` (align_corners=False), on whole lines."""
    if values.shape[axis] == size:
        return values
    moved = values.movedim(axis, -1)
    lines = moved.reshape(-1, 1, moved.shape[-1])
    out = F.interpolate(lines, size=size, mode="linear", align_corners=False)
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)


def slab_ranges(length: int, plane_voxels: int, slab_voxels: int = SLAB_VOXELS) -> list[tuple[int, int]]:
    """[start, stop) ranges along an axis of ``length`` planes, each about ``slab_voxels``."""
    step = max(1, slab_voxels // max(1, plane_voxels))
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def downsample(source: np.ndarray, shape: tuple[int, int, int], slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """``source`` (X, Y, Z), any dtype exactly representable in float32 and any strides, resampled
    to ``shape``: equal to ``grid.resample`` of its float32 copy, without making that copy."""
    X, Y, Z = source.shape
    if tuple(source.shape) == tuple(shape):
        return np.array(source, dtype=np.float32)
    # Last and middle axes chunk by chunk along the first (their lines lie inside a chunk).
    mid = np.empty((X, shape[1], shape[2]), dtype=np.float32)
    for a, b in slab_ranges(X, Y * Z, slab_voxels):
        block = torch.from_numpy(np.ascontiguousarray(source[a:b], dtype=np.float32))
        mid[a:b] = linear_pass(linear_pass(block, 2, shape[2]), 1, shape[1]).numpy()
    return np.ascontiguousarray(linear_pass(torch.from_numpy(mid), 0, shape[0]).numpy())


class Upsampled:
    """A (X, Y, Z) float32 map on the model grid resampled to ``shape`` (the source grid, oriented),
    computed slab by slab along the last axis: :meth:`slab` gives the part of the result that can
    be nonzero, everything else is exactly 0 (interpolating zeros gives +0.0)."""

    def __init__(self, values: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.in_shape = tuple(values.shape)
        self.shape = tuple(shape)
        self.first: np.ndarray | None = None
        nonzero = values != 0
        xs = np.flatnonzero(nonzero.any(axis=(1, 2)))
        if xs.size == 0:
            return
        ys = np.flatnonzero(nonzero.any(axis=(0, 2)))
        self.x = slice(int(xs[0]), int(xs[-1]) + 1)
        self.y = slice(int(ys[0]), int(ys[-1]) + 1)
        # First pass (last axis) on the lines of the bounding box only: other lines are zero.
        first = linear_pass(torch.from_numpy(np.ascontiguousarray(values[self.x, self.y], dtype=np.float32)), 2,
                            self.shape[2])
        zs = np.flatnonzero((first != 0).any(dim=0).any(dim=0).numpy())
        if zs.size == 0:
            return
        self.z0, self.z1 = int(zs[0]), int(zs[-1]) + 1
        self.first = np.ascontiguousarray(first[..., self.z0:self.z1].numpy())

    def slab(self, z0: int, z1: int) -> tuple[slice, slice, np.ndarray] | None:
        """For output planes [z0, z1): (y range, z range, values of shape (X, len y, len z)) where
        the result may be nonzero, or None when it is zero throughout the slab."""
        if self.first is None:
            return None
        a, b = max(z0, self.z0), min(z1, self.z1)
        if a >= b:
            return None
        part = self.first[..., a - self.z0:b - self.z0]
        lines = np.zeros((part.shape[0], self.in_shape[1], b - a), dtype=np.float32)
        lines[:, self.y] = part
        mid = linear_pass(torch.from_numpy(lines), 1, self.shape[1])
        ys = np.flatnonzero((mid != 0).any(dim=2).any(dim=0).numpy())
        if ys.size == 0:
            return None
        y = slice(int(ys[0]), int(ys[-1]) + 1)
        full = np.zeros((self.in_shape[0], y.stop - y.start, b - a), dtype=np.float32)
        full[self.x] = mid[:, y].numpy()
        out = linear_pass(torch.from_numpy(full), 0, self.shape[0]).numpy()
        return y, slice(a, b), out
