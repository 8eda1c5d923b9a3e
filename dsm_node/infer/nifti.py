"""A NIfTI-1 volume written block by block, for maps too large to hold whole (the anomaly map
of a 1,000-slice series is 1 GB of float32).

NIfTI stores the voxels after a 352-byte prefix (header and an empty extension flag) with the
first axis fastest, so planes along the last axis follow one another: blocks of planes in
ascending order can go straight into the (gzip) stream. The header is the one nibabel writes
for the same image, so the file reads back exactly like ``nib.save(Nifti1Image(array, affine))``.
"""
from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

VOX_OFFSET = 352  # 348-byte header + 4-byte extension flag (no extensions)


def write_blocks(path: str | Path, shape: tuple[int, int, int], affine: np.ndarray, dtype: np.dtype | type,
                 blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """Write ``blocks`` — (k0, array of shape (I, J, dk)), k0 ascending without gaps — as the
    NIfTI image of ``shape`` with ``affine`` (gzip-compressed when ``path`` ends in .gz)."""
    path = Path(path)
    dtype = np.dtype(dtype)
    # A zero-stride stand-in of the right shape and type: nibabel fills in the header (shape,
    # datatype, qform/sform from the affine) exactly as for the real array, allocating nothing.
    image = nib.Nifti1Image(np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape)), affine)
    image.update_header()
    header = image.header
    header["vox_offset"] = VOX_OFFSET
    header.set_slope_inter(1.0, 0.0)  # what nibabel's writer stores for unscaled data
    opener = gzip.open(path, "wb", compresslevel=1) if path.name.endswith(".gz") else path.open("wb")
    expected = 0
    with opener as fh:
        fh.write(header.binaryblock)
        fh.write(b"\0" * (VOX_OFFSET - len(header.binaryblock)))
        for k0, block in blocks:
            if k0 != expected or block.shape[:2] != tuple(shape[:2]) or block.ndim != 3:
                raise ValueError(f"{path.name}: block at plane {k0} of shape {block.shape} does not continue "
                                 f"a {tuple(shape)} volume at plane {expected}")
            fh.write(np.asarray(block, dtype=dtype).tobytes(order="F"))
            expected += block.shape[2]
        if expected != shape[2]:
            raise ValueError(f"{path.name}: {expected} of {shape[2]} planes were written")
