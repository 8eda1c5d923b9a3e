"""The NIfTI written block by block (dsm-node infer's anomaly map) is the file nibabel writes."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from dsm_node.infer.nifti import write_blocks


def affine() -> np.ndarray:
    a = np.array([[-0.7, 0.0, 0.0, 12.0], [0.0, -0.7, 0.0, 40.0], [0.0, 0.0, 1.5, -80.0], [0, 0, 0, 1]])
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_blocks_give_the_bytes_nibabel_writes(tmp_path, dtype, suffix):
    rng = np.random.default_rng(4)
    volume = (rng.uniform(0, 1, (9, 7, 11)) * (255 if dtype is np.uint8 else 1)).astype(dtype)
    nib.save(nib.Nifti1Image(volume, affine()), tmp_path / f"ref{suffix}")
    blocks = [(0, volume[:, :, :4]), (4, volume[:, :, 4:5]), (5, volume[:, :, 5:])]
    write_blocks(tmp_path / f"streamed{suffix}", volume.shape, affine(), dtype, blocks)
    read = (lambda p: gzip.open(p).read()) if suffix.endswith(".gz") else (lambda p: p.read_bytes())
    assert read(tmp_path / f"streamed{suffix}") == read(tmp_path / f"ref{suffix}")
    back = nib.load(tmp_path / f"streamed{suffix}")
    assert np.array_equal(np.asarray(back.dataobj), volume) and np.allclose(back.affine, affine())


def test_blocks_out_of_order_or_missing_are_refused(tmp_path):
    v = np.zeros((4, 4, 6), np.float32)
    with pytest.raises(ValueError, match="does not continue"):
        write_blocks(tmp_path / "a.nii.gz", v.shape, affine(), np.float32, [(0, v[:, :, :2]), (3, v[:, :, 3:])])
    with pytest.raises(ValueError, match="4 of 6 planes"):
        write_blocks(tmp_path / "b.nii.gz", v.shape, affine(), np.float32, [(0, v[:, :, :4])])
    with pytest.raises(ValueError, match="does not continue"):
        write_blocks(tmp_path / "c.nii.gz", v.shape, affine(), np.float32, [(0, v[:3, :, :])])
