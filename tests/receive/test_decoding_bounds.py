"""Bounded decoding on receipt (issue 18): a deflate bomb is refused without being inflated in
memory, and an ignored (non-CT) deflated object is not inflated at all."""
from __future__ import annotations

import io
import json
import struct
import zlib

import pydicom
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dsm_node.receive.dataset import DatasetTooLarge, UnparseableDataset, parse_dataset
from tests.receive.rawpeer import peak_rss_bytes
from tests.receive.receive_helpers import echo, file_with_body, store
from tests.support.ct import ct_dataset

MIB = 1 << 20
BOMB_PIXELS = 512 * MIB  # inflated size of the pixel data; about 0.5 MB deflated


def _header(sop_class: str, rows: int) -> pydicom.Dataset:
    ds = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0, explicit=True)
    del ds.PixelData
    ds.SOPClassUID = sop_class
    ds.Rows = ds.Columns = rows
    return ds


def deflate_bomb(sop_class: str = CTImageStorage, pixels: int = BOMB_PIXELS) -> tuple[pydicom.Dataset, bytes]:
    """A data set whose OW pixel data is ``pixels`` zero bytes, deflated piecewise (the test
    never holds the inflated bytes either)."""
    ds = _header(sop_class, rows=16384)
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))]
    zeros = bytes(8 * MIB)
    for _ in range(pixels // len(zeros)):
        out.append(deflater.compress(zeros))
    out.append(deflater.flush())
    return ds, b"".join(out)


def test_parse_refuses_inflation_beyond_the_limit_and_keeps_only_the_header():
    ds, body = deflate_bomb(pixels=64 * MIB)
    assert len(body) < MIB
    try:
        parse_dataset(body, DeflatedExplicitVRLittleEndian, max_inflated=32 * MIB)
    except DatasetTooLarge as exc:
        assert "inflates beyond 33554432 bytes" in str(exc)
    else:
        raise AssertionError("not refused")
    parsed = parse_dataset(body, DeflatedExplicitVRLittleEndian, max_inflated=128 * MIB)
    assert parsed.has_pixel_data and parsed.sop_instance_uid == ds.SOPInstanceUID
    # Truncated pixel data is still detected although only the header part is kept.
    cut = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    inflated_head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, 4 * MIB)
    truncated = cut.compress(inflated_head) + cut.flush()
    try:
        parse_dataset(truncated, DeflatedExplicitVRLittleEndian, max_inflated=128 * MIB)
    except DatasetTooLarge:
        raise AssertionError("wrong reason") from None
    except UnparseableDataset as exc:
        assert "truncated: pixel data declares" in str(exc)
    else:
        raise AssertionError("truncation not detected")


def test_a_deflate_bomb_is_refused_with_a_failure_and_ignored_objects_are_not_inflated(node_factory, tmp_path):
    node = node_factory(config={"dicom": {"max_instance_bytes": 128 * MIB}})
    ds, body = deflate_bomb()
    print(f"\ndeflate bomb: {len(body)} bytes -> {BOMB_PIXELS} bytes of pixel data")
    ct = file_with_body(tmp_path / "bomb.dcm", CTImageStorage, ds.SOPInstanceUID, body, DeflatedExplicitVRLittleEndian)
    sc_ds, sc_body = deflate_bomb(SecondaryCaptureImageStorage)
    sc = file_with_body(tmp_path / "sc.dcm", SecondaryCaptureImageStorage, sc_ds.SOPInstanceUID, sc_body,
                        DeflatedExplicitVRLittleEndian)
    rss_before = peak_rss_bytes(node.proc.pid)
    results = store(node.port, [ct, sc], chunked=True)
    growth = peak_rss_bytes(node.proc.pid) - rss_before
    print(f"peak RSS growth: {growth / MIB:.1f} MiB")
    assert results[0] == (0xC214, "deflated data set inflates beyond 134217728 bytes")
    assert results[1] == (0x0000, None)  # ignored (not stored), never inflated
    assert growth < 64 * MIB
    assert node.spool_files() == [] and node.instance_uids() == set()
    row = node.wait_audit("instance_rejected")[0]
    d = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
    assert d["status"] == "0xC214" and "inflates beyond" in d["reason"]
    assert echo(node.port) == 0
