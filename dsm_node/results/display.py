"""Radiological display order for any input orientation.

Viewers show an axial CT image with the patient's right on the image's left and anterior at
the top, a coronal one with superior at the top and right on the left. Arrays from DICOM
series usually already have that order, NIfTI files often do not (a RAS-oriented NIfTI read
as (z, y, x) puts the spine at the top). :class:`DisplayFrame` permutes and flips a (z, y, x)
array with its LPS affine, without resampling, so that its axes run towards Superior,
Posterior and Left (the nearest ones for an oblique grid):

* ``D[k]`` is an axial image: rows anterior -> posterior, columns right -> left;
* ``D[::-1, j, :]`` is a coronal image: rows superior -> inferior, columns right -> left;
* ``D[::-1, :, i]`` is a sagittal image: rows superior -> inferior, columns anterior -> posterior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class DisplayFrame:
    """How to turn a (z, y, x) array on ``affine_lps``'s grid into display (S, P, L) order."""

    order: tuple[int, int, int]  # source array axis for display axes (S, P, L)
    flip: tuple[bool, bool, bool]  # per display axis: reverse after the transpose
    shape: tuple[int, int, int]  # source shape (z, y, x)
    spacing: tuple[float, float, float]  # display voxel size (S, P, L) in mm

    @classmethod
    def from_affine(cls, affine_lps: np.ndarray, shape: tuple[int, int, int]) -> DisplayFrame:
        a = np.asarray(affine_lps, float)[:3, :3]
        # voxel axes i, j, k (columns of a) are array axes 2, 1, 0
        world_of = [int(np.argmax(np.abs(a[:, v]))) for v in range(3)]
        if sorted(world_of) != [0, 1, 2]:  # 45-degree obliques: assign greedily by size
            world_of, free = [-1] * 3, {0, 1, 2}
            for v in np.argsort(-np.abs(a).max(axis=0)):
                w = max(free, key=lambda w: abs(a[w, v]))
                world_of[v] = w
                free.remove(w)
        order, flip, spacing = [], [], []
        for world in (2, 1, 0):  # S, P, L
            v = world_of.index(world)
            order.append(2 - v)
            flip.append(bool(a[world, v] < 0))
            spacing.append(float(np.linalg.norm(a[:, v])))
        return cls(tuple(order), tuple(flip), tuple(int(s) for s in shape), tuple(spacing))  # type: ignore[arg-type]  # 3 axes

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flip)

    @property
    def slices_are_axial(self) -> bool:
        """True when the source slices (axis 0) are the display's axial images."""
        return self.order[0] == 0

    def array(self, volume: np.ndarray) -> np.ndarray:
        out = np.transpose(volume, self.order)
        for axis, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=axis)
        return out

    def point(self, zyx: ArrayLike) -> np.ndarray:
        """Source (z, y, x) index (float) -> display (S, P, L) index; (N, 3) arrays too."""
        p = np.asarray(zyx, float)[..., list(self.order)]
        for axis, f in enumerate(self.flip):
            if f:
                p[..., axis] = self.shape[self.order[axis]] - 1 - p[..., axis]
        return p


def radiological(volume: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` (z, y, x) in display order and its (S, P, L) voxel size."""
    frame = DisplayFrame.from_affine(affine_lps, volume.shape)
    return frame.array(volume), frame.spacing
