"""The store decision and the instance store without a network: each refusal reason with its
status and audit code, the accept and ignore paths, and what the spool and index then find."""
from __future__ import annotations

import io
import zlib

import pytest
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dsm_node.context import build_context
from dsm_node.receive.decision import Accept, Ignore, Refusal, StorePolicy, StoreRequest
from dsm_node.receive.status import StoreStatus, response
from dsm_node.receive.store import InstanceStore
from dsm_node.settings import load_settings
from dsm_node.spool import Spool
from tests.support.ct import ct_dataset

LIMIT = 1 << 20


def a_slice(**changes):
    ds = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), size=32)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encoded(ds, transfer_syntax: str = ImplicitVRLittleEndian) -> io.BytesIO:
    """The data set as pynetdicom hands it over: no file meta, in the context's syntax."""
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, transfer_syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    body = buf.getvalue()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = deflater.compress(body) + deflater.flush()
    return io.BytesIO(body)


def request_for(ds, transfer_syntax: str = ImplicitVRLittleEndian, *, sop_class: str | None = None,
                sop_instance: str | None = None) -> StoreRequest:
    return StoreRequest(sop_class or str(ds.SOPClassUID), sop_instance or str(ds.SOPInstanceUID),
                        encoded(ds, transfer_syntax), transfer_syntax)


def refusal(policy: StorePolicy, request: StoreRequest) -> Refusal:
    with pytest.raises(Refusal) as caught:
        policy.decide(request)
    return caught.value


def test_a_ct_image_is_accepted_with_its_uids_and_spool_path():
    ds = a_slice()
    request = request_for(ds)
    decision = StorePolicy(LIMIT, ignore_others=False).decide(request)
    assert isinstance(decision, Accept)
    assert (decision.study_uid, decision.series_uid, decision.sop_instance_uid) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert decision.size == len(request.data.getvalue())
    assert decision.path == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert decision.ids["sop_instance_uid"] == ds.SOPInstanceUID
    assert decision.parsed.has_pixel_data


def test_larger_than_the_limit_is_refused_before_parsing():
    request = StoreRequest(CTImageStorage, generate_uid(), io.BytesIO(b"\0" * 2048), ImplicitVRLittleEndian)
    r = refusal(StorePolicy(1024, ignore_others=False), request)
    assert (r.status, r.code) == (StoreStatus.TOO_LARGE, "too_large")
    assert "1024 bytes" in r.reason


def test_a_deflated_data_set_that_inflates_beyond_the_limit_is_too_large():
    request = request_for(a_slice(), DeflatedExplicitVRLittleEndian)
    inflated = len(encoded(a_slice(), ExplicitVRLittleEndian).getvalue())
    assert request.size < 1024 < inflated
    r = refusal(StorePolicy(1024, ignore_others=False), request)
    assert (r.status, r.code) == (StoreStatus.TOO_LARGE, "too_large")


def test_another_sop_class_is_refused_or_ignored_by_policy():
    ds = a_slice(SOPClassUID=SecondaryCaptureImageStorage)
    r = refusal(StorePolicy(LIMIT, ignore_others=False), request_for(ds))
    assert (r.status, r.code) == (StoreStatus.SOP_CLASS_NOT_SUPPORTED, "sop_class")
    assert SecondaryCaptureImageStorage in r.reason

    ignored = StorePolicy(LIMIT, ignore_others=True).decide(request_for(ds))
    assert ignored == Ignore(SecondaryCaptureImageStorage, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    # never inflated, so its study and series stay unknown; garbage is ignored all the same
    deflated = StorePolicy(LIMIT, ignore_others=True).decide(request_for(ds, DeflatedExplicitVRLittleEndian))
    assert deflated == Ignore(SecondaryCaptureImageStorage, None, None)
    garbage = StoreRequest(SecondaryCaptureImageStorage, generate_uid(), io.BytesIO(b"\x01" * 99), ImplicitVRLittleEndian)
    assert StorePolicy(LIMIT, ignore_others=True).decide(garbage) == Ignore(SecondaryCaptureImageStorage, None, None)


def test_garbage_is_unparseable():
    request = StoreRequest(CTImageStorage, generate_uid(), io.BytesIO(b"\x08\x00\x16\x00\xff\xff\xff\x7f"),
                           ImplicitVRLittleEndian)
    r = refusal(StorePolicy(LIMIT, ignore_others=False), request)
    assert (r.status, r.code) == (StoreStatus.UNPARSEABLE, "unparseable")


def test_an_invalid_uid_is_refused_without_uids_in_the_audit():
    r = refusal(StorePolicy(LIMIT, ignore_others=False), request_for(a_slice(SeriesInstanceUID="1.02.3")))
    assert (r.status, r.code) == (StoreStatus.INVALID_UID, "invalid_uid")
    assert r.series_uid is None and r.sop_instance_uid is None


def test_uids_that_contradict_the_request_are_refused():
    ds = a_slice()
    policy = StorePolicy(LIMIT, ignore_others=False)
    r = refusal(policy, request_for(ds, sop_instance=generate_uid()))
    assert (r.status, r.code) == (StoreStatus.UID_CONFLICT, "uid_mismatch")
    assert r.sop_instance_uid == ds.SOPInstanceUID and r.study_uid == ds.StudyInstanceUID

    other_class = a_slice(SOPClassUID=SecondaryCaptureImageStorage)
    r = refusal(policy, request_for(other_class, sop_class=CTImageStorage))
    assert (r.status, r.code) == (StoreStatus.DATASET_MISMATCH, "sop_class_mismatch")
    assert not r.is_conflict


def test_an_image_without_pixel_data_is_unparseable():
    r = refusal(StorePolicy(LIMIT, ignore_others=False), request_for(a_slice(PixelData=None)))
    assert (r.status, r.code) == (StoreStatus.UNPARSEABLE, "unparseable")
    assert "without Pixel Data" in r.reason and r.sop_instance_uid


def test_the_response_carries_an_ascii_error_comment_of_at_most_64_characters():
    assert response(StoreStatus.SUCCESS) == 0 and type(response(StoreStatus.SUCCESS)) is int
    ds = response(StoreStatus.UID_CONFLICT, "é" + "x" * 100)
    assert ds.Status == 0xC213 and type(ds.Status) is int
    assert ds.ErrorComment == "?" + "x" * 63


# The instance store: what the spool and the index find ------------------------------------------
@pytest.fixture
def store(tmp_path):
    ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path}))
    yield InstanceStore(ctx, Spool(ctx.spool_dir, fsync=False))
    ctx.close()


def accepted(ds) -> Accept:
    decision = StorePolicy(LIMIT, ignore_others=False).decide(request_for(ds))
    assert isinstance(decision, Accept)
    return decision


def test_the_store_writes_once_then_finds_a_duplicate(store):
    ds = a_slice()
    first = store.keep(accepted(ds), "SCU", "127.0.0.1")
    assert not first.duplicate and first.bytes > len(encoded(ds).getvalue())  # file meta included
    assert (store.spool.root / accepted(ds).path).stat().st_size == first.bytes
    again = store.keep(accepted(ds), "SCU", "127.0.0.1")
    assert again.duplicate and again.bytes == 0


def test_a_known_sop_instance_uid_in_another_series_is_a_conflict(store):
    ds = a_slice()
    store.keep(accepted(ds), "SCU", "127.0.0.1")
    moved = a_slice(SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID)
    with pytest.raises(Refusal) as caught:
        store.keep(accepted(moved), "SCU", "127.0.0.1")
    r = caught.value
    assert (r.status, r.code, r.is_conflict) == (StoreStatus.UID_CONFLICT, "sop_uid_conflict", True)
    assert r.detail["stored_series_uid"] == ds.SeriesInstanceUID
    assert not (store.spool.root / accepted(moved).path).exists()


def test_no_space_is_out_of_resources_and_writes_nothing(tmp_path):
    ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path}))
    try:
        full = InstanceStore(ctx, Spool(ctx.spool_dir, fsync=False, quota_bytes=100, used_bytes=lambda: 0))
        decision = accepted(a_slice())
        with pytest.raises(Refusal) as caught:
            full.keep(decision, "SCU", "127.0.0.1")
        assert (caught.value.status, caught.value.code) == (StoreStatus.OUT_OF_RESOURCES, "no_space")
        assert caught.value.sop_instance_uid == decision.sop_instance_uid
        assert not any(p.is_file() for p in ctx.spool_dir.rglob("*"))
    finally:
        ctx.close()
