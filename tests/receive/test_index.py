"""The instance index, on SQLite and PostgreSQL: one transaction per instance, idempotent
duplicates, new revision for a late instance, series header without patient attributes."""
from __future__ import annotations

import io
import threading

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dsm_node.audit import query_events
from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import Instance, Series, Study, StudyState, utcnow
from dsm_node.receive.dataset import header_summary, parse_dataset
from dsm_node.receive.index import (
    IndexConflict,
    InstanceRecord,
    SOPInstanceConflict,
    find_instance,
    record_instance,
    spool_usage,
)
from dsm_node.settings import load_settings
from tests.support.ct import ct_dataset


@pytest.fixture
def ctx(tmp_path, db_url):
    context = build_context(load_settings(None, {"storage.data_dir": str(tmp_path / "data"), "database.url": db_url}))
    yield context
    context.close()


def record(study, series, sop=None, **kw):
    sop = sop or generate_uid()
    return InstanceRecord(study, series, sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2",
                          f"{study}/{series}/{sop}.dcm", 1000, calling_ae="PACS", peer_address="127.0.0.1",
                          modality="CT", series_number=3, series_description="venous", **kw)


def test_rows_counts_and_duplicates(ctx):
    study, series = generate_uid(), generate_uid()
    first = record(study, series, header={"Modality": "CT"})
    out = record_instance(ctx, first)
    assert (out.status, out.new_study, out.new_series, out.revision) == ("stored", True, True, 1)
    out2 = record_instance(ctx, record(study, series))
    assert (out2.status, out2.new_study, out2.new_series) == ("stored", False, False)
    dup = record_instance(ctx, first)
    assert dup.status == "duplicate" and dup.instance_id == out.instance_id
    with transaction(ctx.sessions) as s:
        st = s.scalars(select(Study)).one()
        se = s.scalars(select(Series)).one()
        assert (st.instance_count, se.instance_count, st.state, st.calling_ae) == (2, 2, StudyState.RECEIVING, "PACS")
        assert se.header == {"Modality": "CT"} and se.modality == "CT" and se.series_description == "venous"
        assert s.query(Instance).count() == 2
    found = find_instance(ctx.engine, first.sop_instance_uid)
    assert found and found.path == first.path and found.study_uid == study
    assert spool_usage(ctx.engine) == 2000


def test_late_instance_starts_a_new_revision(ctx):
    study, series = generate_uid(), generate_uid()
    first = record(study, series)
    record_instance(ctx, first)
    for state in (StudyState.DONE, StudyState.NO_ELIGIBLE):
        with transaction(ctx.sessions) as s:
            s.execute(update(Study).values(state=state, state_reason="x", selected_series_uid=series))
        out = record_instance(ctx, record(study, series))
        assert out.new_revision and out.previous_state == state
        with transaction(ctx.sessions) as s:
            st = s.scalars(select(Study)).one()
            assert st.state == StudyState.RECEIVING and st.revision == out.revision
            assert st.state_reason is None and st.selected_series_uid is None
    assert out.revision == 3
    # A re-sent (duplicate) instance of a processed study is NOT a new revision.
    with transaction(ctx.sessions) as s:
        s.execute(update(Study).values(state=StudyState.DONE))
        events = query_events(s, event_type="study_revision")
    assert [e.detail["revision"] for e in events] == [2, 3]
    assert events[0].detail["previous_state"] == StudyState.DONE and events[0].study_uid == study
    dup = record_instance(ctx, first)
    assert dup.status == "duplicate" and not dup.new_revision
    with transaction(ctx.sessions) as s:
        st = s.scalars(select(Study)).one()
        assert (st.state, st.revision) == (StudyState.DONE, 3)
        assert len(query_events(s, event_type="study_revision")) == 2
        revisions = sorted(i.study_revision for i in s.scalars(select(Instance)))
    assert revisions == [1, 2, 3]


def test_series_of_another_study_is_a_conflict(ctx):
    series = generate_uid()
    record_instance(ctx, record(generate_uid(), series))
    with pytest.raises(IndexConflict):
        record_instance(ctx, record(generate_uid(), series))
    with transaction(ctx.sessions) as s:
        assert s.query(Study).count() == 1  # the second study's row was rolled back too


def test_a_known_sop_instance_uid_under_another_study_series_or_class_is_a_conflict(ctx):
    study, series = generate_uid(), generate_uid()
    first = record(study, series)
    record_instance(ctx, first)
    sop = first.sop_instance_uid
    other_study, other_series = generate_uid(), generate_uid()
    cases = {
        "study": record(other_study, other_series, sop),
        "series": record(study, other_series, sop),
    }
    enhanced = record(study, series, sop)
    enhanced.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2.1"
    cases["SOP class"] = enhanced
    for where, rec in cases.items():
        with pytest.raises(SOPInstanceConflict, match=f"already stored in another {where}") as exc:
            record_instance(ctx, rec)
        assert (exc.value.study_uid, exc.value.series_uid) == (study, series)
    # Nothing of the refused copies was recorded: no study, series or instance row, no count.
    with transaction(ctx.sessions) as s:
        assert [st.study_uid for st in s.scalars(select(Study))] == [study]
        assert [se.series_uid for se in s.scalars(select(Series))] == [series]
        assert s.scalars(select(Study)).one().instance_count == 1
        assert s.query(Instance).count() == 1
    # The same copy again is still an idempotent duplicate.
    assert record_instance(ctx, first).status == "duplicate"
    # Retention deleting the file does not free the UID for another series.
    with transaction(ctx.sessions) as s:
        s.execute(update(Instance).values(deleted_at=utcnow()))
    with pytest.raises(SOPInstanceConflict):
        record_instance(ctx, cases["series"])
    assert record_instance(ctx, first).status == "restored"


def test_parallel_writers_serialise(ctx):
    """Eight threads, one study: every instance recorded once, counters exact, no error."""
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(40)]
    errors: list[BaseException] = []

    def work(chunk):
        try:
            for sop in chunk:
                record_instance(ctx, record(study, series, sop))
                record_instance(ctx, record(study, series, sop))  # duplicate, concurrently
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(sops[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with transaction(ctx.sessions) as s:
        assert s.query(Instance).count() == 40
        assert s.scalars(select(Study.instance_count)).one() == 40
        assert s.scalars(select(Series.instance_count)).one() == 40


def test_header_summary_has_selection_keys_and_no_patient_data():
    ds = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), index=0)
    ds.OtherPatientIDs = "OTHER-ID"
    ds.PatientAddress = "1 Main Street"
    ds.add_new(0x00091001, "LO", "private")
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    header = header_summary(parse_dataset(io.BytesIO(fp.getvalue()), "1.2.840.10008.1.2").dataset)
    for key in ("Modality", "ImageType", "SeriesDescription", "SliceThickness", "ContrastBolusAgent",
                "ImageOrientationPatient", "BodyPartExamined", "SeriesNumber", "Rows", "Columns", "KVP"):
        assert key in header, key
    assert header["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert header["SliceThickness"] == 2.5 and header["Rows"] == 64 and header["SeriesNumber"] == 2
    assert header["ImageOrientationPatient"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    text = repr(header)
    for forbidden in ("Phantom", "SYN-PHANTOM-0001", "OTHER-ID", "Main Street", "19700101", "Referrer", "private",
                      "SYN0001"):
        assert forbidden not in text, forbidden
    assert not any(k.startswith("Patient") for k in header)
    assert "PixelData" not in header and "StudyDate" not in header


def test_fast_path_matches_the_full_path(ctx, monkeypatch):
    """The common case (known study in `receiving`, known series, new instance) runs on the
    DBAPI fast path; what it writes must read back exactly as the full path's rows."""
    import datetime as dt

    import dsm_node.receive.index as index

    study, series = generate_uid(), generate_uid()
    record_instance(ctx, record(study, series))  # full path: creates study + series

    def no_full_path(*args, **kwargs):
        raise AssertionError("full path taken for the common case")

    monkeypatch.setattr(index, "_record", no_full_path)
    when = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    rec = record(study, series, received_at=when)
    out = record_instance(ctx, rec)
    assert out.status == "stored" and out.revision == 1
    monkeypatch.undo()
    with transaction(ctx.sessions) as s:
        inst = s.scalars(select(Instance).where(Instance.sop_instance_uid == rec.sop_instance_uid)).one()
        assert (inst.path, inst.size_bytes, inst.calling_ae, inst.ignored) == (rec.path, 1000, "PACS", False)
        assert inst.received_at == when and inst.study_revision == 1
        st = s.scalars(select(Study)).one()
        assert st.last_received_at == when and st.instance_count == 2
        assert s.scalars(select(Series)).one().instance_count == 2
    # Duplicates and late instances still go through the full path (and its rules).
    assert record_instance(ctx, rec).status == "duplicate"
