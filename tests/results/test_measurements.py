"""Measurement maths: volume, mean HU and longest diameter on anisotropic / oblique grids."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsm_node.results.measurements import max_diameter_mm, mean_hu, measure_labels, surface_voxels, volume_cm3


def _brute_force_diameter(mask, affine):
    zyx = surface_voxels(mask)
    ijk = zyx[:, ::-1].astype(float)
    pts = ijk @ affine[:3, :3].T
    return max(np.linalg.norm(a - b) for a, b in itertools.combinations(pts, 2))


def test_ellipsoid_on_anisotropic_grid():
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    z, y, x = np.mgrid[:60, :200, :200]
    mask = ((x * 0.8 - 80) / 40) ** 2 + ((y * 0.8 - 80) / 30) ** 2 + ((z * 2.5 - 75) / 50) ** 2 <= 1
    # the longest axis (100 mm) lies along z; voxel centres land exactly on both poles
    assert max_diameter_mm(mask, aff) == pytest.approx(100.0, abs=1e-6)
    assert volume_cm3(int(mask.sum()), aff) == pytest.approx(4 / 3 * np.pi * 40 * 30 * 50 / 1000, rel=0.01)


def test_diameter_matches_brute_force_on_random_blob_and_sheared_grid():
    rng = np.random.default_rng(0)
    mask = np.zeros((12, 20, 20), bool)
    mask[3:9, 4:15, 6:13] = rng.random((6, 11, 7)) > 0.3
    shear = np.array([[0.7, 0.1, 0.0, 5], [0.0, 0.9, 0.2, -3], [0.0, 0.0, 3.0, 100], [0, 0, 0, 1]])
    assert max_diameter_mm(mask, shear) == pytest.approx(_brute_force_diameter(mask, shear), rel=1e-9)


def test_degenerate_masks():
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert max_diameter_mm(one, aff) == 0.0
    line = np.zeros((3, 3, 100), bool)
    line[1, 1, 10:90] = True  # collinear points: qhull cannot build a 3-D hull
    assert max_diameter_mm(line, aff) == pytest.approx(79 * 0.5)
    plane = np.zeros((1, 80, 80), bool)
    plane[0, 10:70, 10:70] = True  # coplanar
    assert max_diameter_mm(plane, aff) == pytest.approx(np.hypot(59 * 0.5, 59 * 0.5))
    assert max_diameter_mm(np.zeros((2, 2, 2), bool), aff) is None
    assert mean_hu(np.zeros((2, 2)), np.zeros((2, 2), bool)) is None


def test_measure_labels_uses_crops_and_offsets():
    aff = np.array([[0.7, 0, 0, -10], [0, 0.7, 0, 20], [0, 0, 2.0, 300], [0, 0, 0, 1.0]])
    labels = np.zeros((10, 30, 40), np.uint8)
    labels[2:5, 3:9, 4:20] = 6
    labels[7, 20, 30] = 31
    labels[7, 22, 33] = 31
    hu = np.where(labels == 6, 55.0, -1000.0).astype(np.float32)
    hu[7, 20, 30], hu[7, 22, 33] = 10, 20
    out = measure_labels(labels, hu, aff, diameter_labels={31})
    assert sorted(out) == [6, 31]
    liver, tumor = out[6], out[31]
    assert liver.voxel_count == 3 * 6 * 16 and liver.mean_hu == pytest.approx(55.0)
    assert liver.volume_cm3 == pytest.approx(liver.voxel_count * 0.7 * 0.7 * 2.0 / 1000)
    assert liver.max_diameter_mm is None
    assert tumor.mean_hu == pytest.approx(15.0)
    assert tumor.max_diameter_mm == pytest.approx(np.hypot(2 * 0.7, 3 * 0.7))
    assert measure_labels(labels, hu, aff, only={6}).keys() == {6}
