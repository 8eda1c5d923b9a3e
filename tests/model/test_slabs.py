"""Slab-wise resampling (model/slabs.py) equals the whole-volume ``grid.resample`` voxel for voxel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import grid
from model.slabs import Upsampled, downsample

CASES = [  # (model-grid shape, source shape): odd sizes, up/down by non-integer factors
    ((13, 17, 21), (29, 31, 50)),
    ((7, 9, 5), (35, 36, 14)),
    ((30, 33, 37), (64, 60, 100)),
    ((9, 10, 27), (50, 50, 80)),
    ((12, 11, 10), (12, 11, 23)),  # in-plane unchanged
]


def whole(values: np.ndarray, shape) -> np.ndarray:
    return grid.resample(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None], shape)[0].numpy()


def sparse_map(shape, seed: int) -> np.ndarray:
    """Zero with a blob of positive values (like a gated score) and a second small island."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.float32)
    sl = tuple(slice(n // 4, max(n // 4 + 1, 3 * n // 4)) for n in shape)
    out[sl] = rng.uniform(0.2, 2.0, out[sl].shape).astype(np.float32)
    out[(0, -1, shape[2] // 2)] = 1.5
    return out


@pytest.mark.parametrize("small,large", CASES)
@pytest.mark.parametrize("slab_voxels", [1, 700, 1 << 22])
def test_upsampled_slabs_equal_whole_volume(small, large, slab_voxels):
    values = sparse_map(small, seed=sum(small))
    ref = whole(values, large)
    up = Upsampled(values, large)
    got = np.zeros(large, np.float32)
    step = max(1, slab_voxels // (large[0] * large[1]))
    for z0 in range(0, large[2], step):
        part = up.slab(z0, min(z0 + step, large[2]))
        if part is not None:
            y, z, vals = part
            got[:, y, z] = vals
    assert np.array_equal(got, ref)
    assert (ref != 0).any()


def test_upsampled_of_zeros_is_empty():
    up = Upsampled(np.zeros((5, 6, 7), np.float32), (11, 12, 13))
    assert up.slab(0, 13) is None


@pytest.mark.parametrize("small,large", CASES)
@pytest.mark.parametrize("slab_voxels", [1, 999, 1 << 22])
def test_downsample_of_int16_view_equals_float32_whole_volume(small, large, slab_voxels):
    rng = np.random.default_rng(len(large))
    # (z, y, x) int16 HU as a volume holds them, seen as a flipped (i, j, k) view like the model's input
    zyx = rng.integers(-1024, 3000, size=large[::-1]).astype(np.int16)
    view = zyx.transpose(2, 1, 0)[::-1, ::-1, :]
    ref = whole(np.asarray(view, np.float32), small)
    assert np.array_equal(downsample(view, small, slab_voxels), ref)


def test_downsample_same_shape_is_a_float32_copy():
    values = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out = downsample(values, (2, 3, 4))
    assert out.dtype == np.float32 and np.array_equal(out, values)
