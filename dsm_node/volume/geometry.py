"""Affine helpers: DICOM patient coordinates (LPS) and NIfTI/nibabel world coordinates (RAS).

Conventions used throughout ``dsm_node.volume``:

* A :class:`~dsm_node.volume.Volume` array is indexed ``hu[k, j, i]`` = (slice, row, column).
* ``affine_lps`` maps the voxel index column vector ``(i, j, k, 1)`` (column, row, slice) to
  patient LPS millimetres, exactly as DICOM defines it (PS3.3 C.7.6.2.1.1)::

      P = IPP_0 + i * Δc * rowcos + j * Δr * colcos + k * slice_step

  where ``rowcos``/``colcos`` are the two ImageOrientationPatient triplets (the first is the
  direction of increasing column index), ``Δr, Δc`` = PixelSpacing (row spacing first).
* nibabel stores arrays as ``data[i, j, k]`` with a RAS affine; ``volume.hu.transpose(2, 1, 0)``
  with :func:`lps_to_ras` of ``affine_lps`` is the same image as a NIfTI file.
"""
from __future__ import annotations

import numpy as np

#: LPS <-> RAS: flip the first two world axes. Its own inverse.
LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """World LPS affine -> world RAS affine (same voxel axes)."""
    return LPS_RAS_FLIP @ np.asarray(affine_lps, dtype=float)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """World RAS affine -> world LPS affine (same voxel axes)."""
    return LPS_RAS_FLIP @ np.asarray(affine_ras, dtype=float)


def affine_from_dicom(
    position: np.ndarray, row_cosine: np.ndarray, column_cosine: np.ndarray,
    pixel_spacing: tuple[float, float], slice_step: np.ndarray,
) -> np.ndarray:
    """The 4x4 LPS affine of index (column, row, slice) from DICOM plane attributes.

    ``pixel_spacing`` is DICOM order (row spacing, column spacing); ``slice_step`` is the vector
    in mm from slice k to slice k+1.
    """
    affine = np.eye(4)
    affine[:3, 0] = np.asarray(row_cosine, float) * float(pixel_spacing[1])
    affine[:3, 1] = np.asarray(column_cosine, float) * float(pixel_spacing[0])
    affine[:3, 2] = np.asarray(slice_step, float)
    affine[:3, 3] = np.asarray(position, float)
    return affine


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel (mm^3); correct for oblique and sheared grids."""
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3])))


def index_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """(N, 3) voxel indices (i, j, k) -> (N, 3) world coordinates."""
    ijk = np.asarray(ijk, dtype=float)
    a = np.asarray(affine, float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def zyx_to_ijk(zyx: np.ndarray) -> np.ndarray:
    """Array indices as returned by ``np.nonzero`` on a (z, y, x) array -> (i, j, k) columns."""
    return np.asarray(zyx)[..., ::-1]
