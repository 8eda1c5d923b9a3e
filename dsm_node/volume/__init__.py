"""Volume assembly: the files of one CT series -> a float32 HU array on the source grid.

Public API::

    from dsm_node.volume import assemble_volume, Volume, VolumeError
    vol = assemble_volume(paths)          # raises VolumeError(reason, code)
    vol.hu            # (z, y, x) HU: int16 (float32 when the rescale gives fractions), z ascending along the slice normal
    vol.affine_lps    # 4x4, (i=column, j=row, k=slice, 1) -> patient LPS mm
    vol.affine_ras    # same for nibabel (with vol.nifti_array())
"""
from .assembly import SourceFrame, Volume, VolumeError, assemble_volume, files_of, find_series
from .geometry import affine_from_dicom, lps_to_ras, ras_to_lps, voxel_volume_mm3
from .nifti import GridMismatchError, label_image_to_volume_grid, load_labels

__all__ = [
    "GridMismatchError",
    "SourceFrame",
    "Volume",
    "VolumeError",
    "affine_from_dicom",
    "assemble_volume",
    "files_of",
    "find_series",
    "label_image_to_volume_grid",
    "load_labels",
    "lps_to_ras",
    "ras_to_lps",
    "voxel_volume_mm3",
]
