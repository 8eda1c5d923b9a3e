"""Decoding at job time is bounded (issue 18): slices x Rows x Columns is checked before any
allocation, and a compressed frame whose codestream declares another size than Rows x Columns
is refused before a decoder allocates what it asks for."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from dsm_node.volume import VolumeError, assemble_volume
from tests.support.ct import write_ct_series
from tests.tools import REPO


def test_too_many_voxels_fail_before_allocation(tmp_path):
    series = write_ct_series(tmp_path, 4, 32)
    vol = assemble_volume(series.files, max_voxels=4 * 32 * 32)
    assert vol.hu.shape == (4, 32, 32)
    with pytest.raises(VolumeError) as err:
        assemble_volume(series.files, max_voxels=4 * 32 * 32 - 1)
    assert err.value.code == "too_large" and "4 slices of 32 x 32 pixels" in err.value.reason
    for path in series.files:  # the header alone asks for 17 GB per slice
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 65535
        ds.save_as(path)
    with pytest.raises(VolumeError) as err:
        assemble_volume(series.files)
    assert err.value.code == "too_large" and "65535 x 65535" in err.value.reason


def _patch_j2k_size(data: bytes, size: int) -> bytes:
    at = data.find(b"\xff\x4f\xff\x51")
    patched = bytearray(data)
    patched[at + 8 : at + 16] = size.to_bytes(4, "big") * 2  # Xsiz, Ysiz
    return bytes(patched)


def _patch_jpeg_size(data: bytes, size: int) -> bytes:
    at = data.find(b"\xff\xf7")  # SOF55 (JPEG-LS)
    patched = bytearray(data)
    patched[at + 5 : at + 9] = size.to_bytes(2, "big") * 2  # height, width
    return bytes(patched)


@pytest.mark.parametrize("ts, patch", [(JPEG2000Lossless, _patch_j2k_size), (JPEGLSLossless, _patch_jpeg_size)])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(tmp_path, ts, patch):
    series = write_ct_series(tmp_path, 3, 32)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.compress(ts)
        ds.save_as(path)
    assert assemble_volume(series.files).hu.shape == (3, 32, 32)  # the codec works as such
    ds = pydicom.dcmread(series.files[1])
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__()
    ds.PixelData = pydicom.encaps.encapsulate([patch(frame, 60000)])
    ds.save_as(series.files[1])
    # In a child with a 3 GiB address-space limit: were the check missing, the decoder's
    # allocation (60000 x 60000 pixels) fails there instead of exhausting this machine.
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from dsm_node.volume import VolumeError, assemble_volume
        try:
            assemble_volume({[str(p) for p in series.files]!r})
        except VolumeError as exc:
            print(exc.code, exc.reason)
            sys.exit(0)
        print("assembled")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("decode ") and "codestream is 60000 x 60000 pixels, the header says 32 x 32" in done.stdout
