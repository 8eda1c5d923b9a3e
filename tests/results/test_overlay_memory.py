"""The overlay writer's statistics without volume-sized temporaries equal the whole-volume ones."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from dsm_node.infer.overlays import _centroid, _counts, _median_voxel


def test_counts_centroid_and_class_voxels_equal_the_whole_volume_computation():
    rng = np.random.default_rng(3)
    zyx = np.zeros((23, 37, 41), np.uint8)
    zyx[3:17, 5:30, 8:20] = rng.integers(0, 6, (14, 25, 12))
    zyx[20, 1, 40] = 9
    for labels in (zyx, zyx[::-1, :, ::-1], zyx.transpose(0, 2, 1)[:, ::-1]):  # display views
        assert np.array_equal(_counts(labels, 12), np.bincount(labels.ravel(), minlength=12))
        assert np.array_equal(_centroid(labels), np.argwhere(labels > 0).mean(axis=0))
        boxes = ndimage.find_objects(labels)
        for value in (1, 5, 9):
            box = boxes[value - 1]
            voxels = np.argwhere(labels[box] == value) + np.array([b.start for b in box])
            assert np.array_equal(voxels, np.argwhere(labels == value))


def _reference_median_voxel(labels: np.ndarray, value: int) -> tuple[int, ...]:
    """What the writer did before: argwhere list, per-axis median, nearest voxel (L1, first)."""
    box = ndimage.find_objects(labels)[value - 1]
    voxels = np.argwhere(labels[box] == value) + np.array([b.start for b in box])
    centre = np.array([int(v) for v in np.median(voxels, axis=0)])
    return tuple(int(v) for v in voxels[np.abs(voxels - centre).sum(axis=1).argmin()])


def test_finding_centre_equals_the_median_and_nearest_voxel_of_the_coordinate_list():
    rng = np.random.default_rng(5)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(3, 30, 3))
        labels = np.zeros(shape, np.uint8)
        field = ndimage.gaussian_filter(rng.random(shape), 2)
        labels[field > np.quantile(field, rng.uniform(0.5, 0.995))] = 3
        if trial % 3 == 0:  # scattered voxels: even counts, ties between nearest voxels
            labels[rng.random(shape) < 0.02] = 3
        box = ndimage.find_objects(labels)[2]
        assert _median_voxel(labels, box, 3) == _reference_median_voxel(labels, 3)
    # A class spanning several slabs (the nearest-voxel search runs 1 M voxels at a time): a
    # curved shell whose median lies outside it.
    z, y, x = np.ogrid[:90, :120, :120]
    r = np.sqrt((z - 45) ** 2 + (y - 60) ** 2 + (x - 60) ** 2)
    labels = ((r > 40) & (r < 43) & (x > 55)).astype(np.uint8) * 2
    box = ndimage.find_objects(labels)[1]
    assert _median_voxel(labels, box, 2) == _reference_median_voxel(labels, 2)
