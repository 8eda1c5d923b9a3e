"""The SCP against real peers: DCMTK echoscu/storescu and pynetdicom SCUs, node in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.receive.receive_helpers import NODE_AE, body_of, echo, file_with_body, store, storescu
from tests.support.ct import ct_dataset, write_ct_series
from tests.tools import require_tool

SUCCESS = 0x0000


def detail(row):
    return row.detail if isinstance(row.detail, dict) else json.loads(row.detail)


def test_echo_with_dcmtk_and_audit(shared_node):
    exe = require_tool("echoscu")
    res = subprocess.run([exe, "-aet", "ECHOER", "-aec", NODE_AE, "127.0.0.1", str(shared_node.port)],
                         capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=30)
    assert res.returncode == 0, res.stderr
    assert echo(shared_node.port) == SUCCESS
    rows = [r for r in shared_node.wait_audit("echo", 2) if r.actor_ae == "ECHOER"]
    assert rows and rows[0].actor_address == "127.0.0.1" and rows[0].outcome == 0
    accepted = [r for r in shared_node.audit("association_accepted") if r.actor_ae == "ECHOER"]
    assert accepted and detail(accepted[0])["called_ae"] == NODE_AE
    released = [r for r in shared_node.wait_audit("association_released", 2) if r.actor_ae == "ECHOER"]
    assert released


def test_storescu_series_stored_as_received(shared_node, series_dir):
    res = storescu(shared_node.port, series_dir.files)
    assert res.returncode == 0, res.stderr
    assert set(series_dir.sop_instance_uids) <= shared_node.instance_uids()
    rows = shared_node.query(
        "select i.sop_instance_uid, i.path, i.size_bytes, i.transfer_syntax_uid, i.calling_ae, s.study_uid "
        "from instances i join series se on se.id = i.series_id join studies s on s.id = se.study_id "
        "where se.series_uid = :u", u=series_dir.series_uid)
    assert len(rows) == len(series_dir.files)
    sent = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in series_dir.files}
    for row in rows:
        path = shared_node.spool / row.path
        assert row.path == f"{series_dir.study_uid}/{series_dir.series_uid}/{row.sop_instance_uid}.dcm"
        assert path.stat().st_size == row.size_bytes and row.calling_ae == "STORESCU"
        # The data set bytes are exactly those sent (storescu sends the file's encoding as is).
        assert body_of(path) == body_of(sent[row.sop_instance_uid])
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid
        assert meta.TransferSyntaxUID == row.transfer_syntax_uid
        assert meta.SourceApplicationEntityTitle == "STORESCU"
    ds = dcmread(shared_node.spool / rows[0].path)
    assert ds.pixel_array.shape == (64, 64)
    summary = [r for r in shared_node.wait_audit("instances_stored")
               if r.series_uid == series_dir.series_uid]
    assert len(summary) == 1  # one row per association and series, not per instance
    assert detail(summary[0])["count"] == len(series_dir.files)
    assert detail(summary[0])["bytes"] == sum(r.size_bytes for r in rows)
    assert not shared_node.audit("instance_stored")
    # Patient name/ID never reach the logs or the audit trail.
    logs = "\n".join(shared_node.output)
    audit = repr([tuple(r) for r in shared_node.audit()])
    for secret in ("SYN-PHANTOM-0001", "Synthetic^Phantom", "Phantom"):
        assert secret not in logs and secret not in audit
    assert any('"instances_stored"' in line for line in shared_node.output)  # JSON lines
    header = shared_node.query("select header from series where series_uid = :u", u=series_dir.series_uid)[0].header
    header = header if isinstance(header, dict) else json.loads(header)
    assert header["Modality"] == "CT" and "PatientName" not in header and "PatientID" not in header

    # The same series again: duplicates are idempotent (Success, stored once).
    res = storescu(shared_node.port, series_dir.files[:3])
    assert res.returncode == 0, res.stderr
    count = shared_node.query("select count(*) as n from instances i join series se on se.id = i.series_id "
                              "where se.series_uid = :u", u=series_dir.series_uid)[0].n
    assert count == len(series_dir.files)
    dups = [r for r in shared_node.wait_audit("instances_stored", 2) if r.series_uid == series_dir.series_uid]
    assert detail(dups[-1])["duplicates"] == 3 and detail(dups[-1])["count"] == 0


def test_known_sop_instance_uid_in_another_study_is_refused_and_not_written(shared_node, tmp_path):
    """The reported defect: slice 2's content under slice 1's SOP Instance UID with a new study
    and series got Success and an orphan spool file. Now: 0xC213, audited, nothing written."""
    series = write_ct_series(tmp_path / "orig", 3, 64)
    assert storescu(shared_node.port, series.files).returncode == 0
    before = {p: p.read_bytes() for p in shared_node.spool_files()}
    first = dcmread(series.files[0])
    forged = dcmread(series.files[1])
    forged.SOPInstanceUID = forged.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    forged.StudyInstanceUID, forged.SeriesInstanceUID = generate_uid(), generate_uid()
    forged.save_as(tmp_path / "other-study.dcm", enforce_file_format=True)
    # The same UID and series under another SOP class (Enhanced CT) is a conflict as well.
    other_class = dcmread(series.files[0])
    other_class.SOPClassUID = other_class.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    other_class.save_as(tmp_path / "other-class.dcm", enforce_file_format=True)

    res = storescu(shared_node.port, [tmp_path / "other-study.dcm", tmp_path / "other-class.dcm"],
                   verbose=True, no_halt=True)
    responses = [line for line in (res.stdout + res.stderr).splitlines() if "Received Store Response" in line]
    # storescu -v names the status class; 0xC213 itself is in the audit row below.
    assert len(responses) == 2 and all("Error: CannotUnderstand" in r for r in responses), res.stdout + res.stderr
    assert "Success" not in "".join(responses)
    # Nothing written: no file beside the original, the original untouched, no new rows.
    assert {p: p.read_bytes() for p in shared_node.spool_files()} == before
    assert not list(shared_node.spool.rglob(f"{forged.StudyInstanceUID}*"))
    assert not shared_node.query("select id from studies where study_uid = :u", u=forged.StudyInstanceUID)
    assert not shared_node.query("select id from series where series_uid = :u", u=forged.SeriesInstanceUID)
    row = shared_node.query("select i.path, i.sop_class_uid from instances i where sop_instance_uid = :u",
                            u=first.SOPInstanceUID)
    assert [(r.path, r.sop_class_uid) for r in row] == [
        (f"{series.study_uid}/{series.series_uid}/{first.SOPInstanceUID}.dcm", CTImageStorage)]
    conflicts = [r for r in shared_node.wait_audit("instance_conflict", 2)
                 if detail(r).get("sop_instance_uid") == first.SOPInstanceUID]
    assert len(conflicts) == 2 and all(r.outcome == 8 for r in conflicts)
    by_study = {r.study_uid: detail(r) for r in conflicts}
    assert by_study[forged.StudyInstanceUID]["reason"] == "SOP Instance UID already stored in another study"
    assert by_study[forged.StudyInstanceUID]["stored_study_uid"] == series.study_uid
    assert by_study[forged.StudyInstanceUID]["stored_series_uid"] == series.series_uid
    assert by_study[forged.StudyInstanceUID]["status"] == "0xC213"
    assert by_study[series.study_uid]["reason"] == "SOP Instance UID already stored in another SOP class"
    # Not counted as stored or duplicate in the association's summary.
    summaries = [detail(r) for r in shared_node.audit("instances_stored")
                 if r.series_uid in (forged.SeriesInstanceUID, series.series_uid)]
    assert sum(s["count"] for s in summaries) == 3 and sum(s["duplicates"] for s in summaries) == 0


def test_bad_uids_never_touch_the_filesystem(shared_node, tmp_path):
    before = set(shared_node.spool_files())
    items = []
    # (pynetdicom's SCU itself refuses UIDs over 64 characters; the spool tests cover those.)
    for bad in ("../../x", "1.02.3", "1.2.3.4a"):
        ds = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
        ds.SOPInstanceUID = bad
        ds.file_meta.MediaStorageSOPInstanceUID = bad
        items.append(ds)
    ds = ct_dataset(study_uid="../../../etc", series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
    items.append(ds)
    results = store(shared_node.port, items)
    assert [s for s, _ in results] == [0xC212] * 4
    assert all("invalid" in (c or "") for _, c in results)
    assert set(shared_node.spool_files()) == before
    outside = shared_node.data_dir.parent  # spool/../../x
    assert not any((outside / n).exists() for n in ("x", "x.dcm")) and not (shared_node.data_dir / "etc").exists()
    rejected = shared_node.audit("instance_rejected")
    reasons = [detail(r)["reason"] for r in rejected]
    assert any("SOPInstanceUID '../../x'" in r for r in reasons)
    assert any("'1.02.3'" in r and "leading zero" in r for r in reasons)
    assert any("StudyInstanceUID" in r for r in reasons)
    assert all(detail(r)["status"] == "0xC212" for r in rejected if "invalid" in detail(r)["reason"])


def test_truncated_and_garbage_data_sets_are_refused(shared_node, tmp_path, series_dir):
    before = set(shared_node.spool_files())
    whole = series_dir.files[0].read_bytes()
    sop_class = str(CTImageStorage)
    truncated_uid = generate_uid()
    src = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0,
                     sop_instance_uid=truncated_uid)
    src.save_as(tmp_path / "full.dcm", enforce_file_format=True)
    body = body_of(tmp_path / "full.dcm")
    files = [
        file_with_body(tmp_path / "trunc.dcm", sop_class, truncated_uid, body[: len(body) - 1000]),
        file_with_body(tmp_path / "garbage.dcm", sop_class, generate_uid(), os.urandom(3000)),
        file_with_body(tmp_path / "text.dcm", sop_class, generate_uid(), b"this is not DICOM at all" * 40),
        file_with_body(tmp_path / "nopixels.dcm", sop_class, truncated_uid, body[: body.find(b"\xe0\x7f\x10\x00")]),
    ]
    assert whole  # (the shared series file stays untouched)
    results = store(shared_node.port, files, chunked=True)
    statuses = [s for s, _ in results]
    assert statuses[0] == 0xC210 and "truncated" in results[0][1]
    assert statuses[1] in (0xC210, 0xC212) and statuses[2] == 0xC210 and statuses[3] == 0xC210
    assert set(shared_node.spool_files()) == before
    reasons = [detail(r)["reason"] for r in shared_node.audit("instance_rejected")]
    assert any("truncated" in r for r in reasons)


def test_non_ct_objects_are_acknowledged_not_stored(shared_node, tmp_path):
    study = generate_uid()
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = study, generate_uid(), "SR"
    sr.PatientName = "Synthetic^Phantom"
    sc = ct_dataset(study_uid=study, series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    before = set(shared_node.spool_files())
    assert [s for s, _ in store(shared_node.port, [sr, sc, sc])] == [SUCCESS] * 3
    assert set(shared_node.spool_files()) == before
    assert not shared_node.query("select id from studies where study_uid = :u", u=study)
    rows = [r for r in shared_node.wait_audit("instance_ignored", 2) if r.study_uid == study]
    assert sorted(detail(r)["count"] for r in rows) == [1, 2]
    assert {c for r in rows for c in detail(r)["sop_classes"]} == {BasicTextSRStorage, SecondaryCaptureImageStorage}


def test_compressed_and_deflated_transfer_syntaxes_stored_as_received(shared_node, tmp_path):
    pytest.importorskip("numpy")
    study, series = generate_uid(), generate_uid()
    rle = ct_dataset(study_uid=study, series_uid=series, frame_uid=generate_uid(), index=0, explicit=True)
    rle.compress(RLELossless)
    rle.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    deflated = ct_dataset(study_uid=study, series_uid=series, frame_uid=generate_uid(), index=1, explicit=True)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    results = store(shared_node.port, [tmp_path / "rle.dcm", tmp_path / "deflated.dcm"])
    assert [s for s, _ in results] == [SUCCESS, SUCCESS]
    rows = {r.transfer_syntax_uid: r for r in shared_node.query(
        "select i.* from instances i join series se on se.id = i.series_id where se.series_uid = :u", u=series)}
    assert set(rows) == {RLELossless, DeflatedExplicitVRLittleEndian}
    stored = dcmread(shared_node.spool / rows[RLELossless].path)
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert body_of(shared_node.spool / rows[RLELossless].path) == body_of(tmp_path / "rle.dcm")
    assert stored.pixel_array.shape == (64, 64)  # decodable later, never decoded on receipt
    assert dcmread(shared_node.spool / rows[DeflatedExplicitVRLittleEndian].path).Rows == 64


def test_access_control_rejections_are_audited(node_factory):
    node = node_factory(config={"dicom": {"peers": [
        {"ae_title": "PACS", "networks": ["127.0.0.1/32"]},
        {"ae_title": "FARPACS", "networks": ["10.20.0.0/16"]},
    ]}})
    assert echo(node.port, calling="PACS") == SUCCESS
    assert echo(node.port, calling="STRANGER") is None  # unknown AE
    assert echo(node.port, calling="FARPACS") is None  # known AE, foreign address
    assert echo(node.port, calling="PACS", called="OTHERNODE") is None  # not our AE title
    rows = node.wait_audit("association_rejected", 3)
    by_ae = {r.actor_ae: detail(r)["reason"] for r in rows}
    assert "not a configured peer" in by_ae["STRANGER"]
    assert "10.20.0.0" not in by_ae["FARPACS"] and "not in the networks configured" in by_ae["FARPACS"]
    assert "called AE title 'OTHERNODE'" in by_ae["PACS"]
    assert all(r.event_code == "110113" and r.outcome == 8 and r.actor_address == "127.0.0.1" for r in rows)
    assert len(node.audit("association_accepted")) == 1


def test_loopback_only_by_default_and_foreign_peer_list(node_factory):
    # A peer list that excludes 127.0.0.1 entirely: even loopback is refused, at accept (the
    # address is in no peer's networks, so nothing is read from the connection).
    node = node_factory(config={"dicom": {"peers": [{"ae_title": "TESTSCU", "networks": ["192.0.2.0/24"]}]}})
    assert echo(node.port, calling="TESTSCU") is None
    row = node.wait_audit("connection_refused")[0]
    assert "source address 127.0.0.1 is not in any configured peer's networks" in detail(row)["reason"]
    assert row.event_code == "110113" and row.outcome == 8 and row.actor_address == "127.0.0.1"
    assert node.audit("association_rejected") == []


def test_other_sop_classes_reject(node_factory):
    node = node_factory(config={"dicom": {"other_sop_classes": "reject"}})
    sc = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ct = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
    results = store(node.port, [sc, ct])
    assert [s for s, _ in results] == [0x0122, SUCCESS]
    row = node.wait_audit("instance_rejected")[0]
    assert detail(row)["status"] == "0x0122" and "not accepted" in detail(row)["reason"]


def test_quota_refuses_with_a700_and_leaves_nothing_half_written(node_factory, tmp_path):
    series = write_ct_series(tmp_path / "s", 6, 64)
    size = series.files[0].stat().st_size
    node = node_factory(config={"storage": {"quota_bytes": int(size * 3.5)}})
    res = storescu(node.port, series.files, verbose=True, no_halt=True)
    statuses = [line for line in (res.stdout + res.stderr).splitlines() if "Received Store Response" in line]
    assert sum("Success" in s for s in statuses) == 3
    assert sum("Refused: OutOfResources" in s or "0xa700" in s.lower() for s in statuses) == 3, statuses
    files = node.spool_files()
    assert len(files) == 3 and all(f.suffix == ".dcm" and not f.name.startswith(".") for f in files)
    assert len(node.instance_uids()) == 3
    full = node.wait_audit("storage_full")
    assert len(full) == 1 and detail(full[0])["status"] == "0xA700" and "quota" in detail(full[0])["reason"]


def test_max_instance_size(node_factory, tmp_path):
    series = write_ct_series(tmp_path / "s", 2, 64)
    assert 6000 < series.files[0].stat().st_size < 12000
    node = node_factory(config={"dicom": {"max_instance_bytes": 6000}})
    results = store(node.port, series.files[:1])
    assert results == [(0xC214, "instance larger than 6000 bytes")]
    assert node.spool_files() == []
    # A data set beyond twice the limit is cut off while it arrives (not buffered whole).
    big = write_ct_series(tmp_path / "big", 1, 512)
    try:
        result = store(node.port, big.files)
    except (RuntimeError, ConnectionError, OSError):
        result = [(None, None)]
    assert result == [(None, None)]  # no response: the node aborted the association
    rows = node.wait_audit("instance_rejected", 2)
    assert any("association aborted" in detail(r)["reason"] for r in rows)
    aborted = node.wait_audit("association_aborted")
    assert aborted and aborted[0].actor_ae == "TESTSCU" and aborted[0].actor_address == "127.0.0.1"
    assert "max_instance_bytes" in detail(aborted[0])["reason"]
    assert node.spool_files() == []
    assert echo(node.port) == SUCCESS  # still serving


def test_max_associations(node_factory):
    from pynetdicom.sop_class import Verification

    from tests.receive.receive_helpers import make_ae

    node = node_factory(config={"dicom": {"max_associations": 1}})
    ae = make_ae("HOLDER", [(Verification, None)])
    first = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert first.is_established
        assert echo(node.port, calling="SECOND") is None
    finally:
        first.release()
    assert echo(node.port, calling="THIRD") == SUCCESS
    rows = node.wait_audit("association_rejected")
    assert rows[0].actor_ae == "SECOND" and "too many associations" in detail(rows[0])["reason"]
