"""The overlay writer's statistics without volume-sized temporaries equal the whole-volume ones."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from dsm_node.infer.overlays import _centroid, _counts


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
