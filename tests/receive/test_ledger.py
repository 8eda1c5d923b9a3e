"""The per-association ledger without a network: counts, per-series summaries, the one
storage_full row, the closing row, the oversize cut-off, and the open-ledger registry."""
from __future__ import annotations

from dsm_node.audit import MAJOR_FAILURE, MINOR_FAILURE, SERIOUS_FAILURE
from dsm_node.receive.decision import Refusal
from dsm_node.receive.ledger import FLUSH_INTERVAL_S, IGNORED_REASON, AssociationLedger, AuditRow, Ledgers
from dsm_node.receive.status import StoreStatus


def ledger(**kwargs) -> AssociationLedger:
    return AssociationLedger("SCU", "127.0.0.1", "DSMNODE", started=100.0, last_flush=100.0, **kwargs)


def test_counts_and_per_series_summaries_in_first_seen_order():
    led = ledger()
    led.series("2.2", "1.1")  # opened by an accepted instance that is then refused: no row
    led.record_stored("2.1", "1.1", 1000)
    led.record_stored("2.1", "1.1", 500)
    led.record_duplicate("2.1", "1.1")
    led.record_duplicate("2.3", "1.1")
    led.record_ignored("9.1", "1.1", "1.2.840.10008.5.1.4.1.1.7")
    led.record_ignored(None, None, "1.2.840.10008.5.1.4.1.1.104.1")
    led.record_ignored(None, None, "1.2.840.10008.5.1.4.1.1.7")
    assert led.totals == {"stored": 2, "duplicates": 2, "ignored": 3, "refused": 0, "bytes": 1500}

    rows = led.take_summaries(now=130.0)
    actor = {"actor_ae": "SCU", "actor_address": "127.0.0.1"}
    assert rows == [
        AuditRow("instances_stored", {**actor, "study_uid": "1.1", "series_uid": "2.1", "count": 2, "bytes": 1500,
                                      "duplicates": 1}),
        AuditRow("instances_stored", {**actor, "study_uid": "1.1", "series_uid": "2.3", "count": 0, "bytes": 0,
                                      "duplicates": 1}),
        AuditRow("instance_ignored", {**actor, "study_uid": "1.1", "series_uid": "9.1", "count": 1,
                                      "sop_classes": ["1.2.840.10008.5.1.4.1.1.7"], "reason": IGNORED_REASON}),
        AuditRow("instance_ignored", {**actor, "study_uid": None, "series_uid": None, "count": 2,
                                      "sop_classes": ["1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.7"],
                                      "reason": IGNORED_REASON}),
    ]
    assert led.take_summaries() == []  # taken once; the totals stay for the closing row
    assert led.totals["stored"] == 2


def test_a_summary_is_due_after_the_flush_interval():
    led = ledger()
    assert not led.flush_due(now=100.0 + FLUSH_INTERVAL_S)
    assert led.flush_due(now=100.1 + FLUSH_INTERVAL_S)
    led.take_summaries(now=200.0)
    assert not led.flush_due(now=200.0 + FLUSH_INTERVAL_S)


def test_refusals_are_counted_and_storage_full_is_audited_once():
    led = ledger()
    full = Refusal(StoreStatus.OUT_OF_RESOURCES, "quota", "no_space", study_uid="1.1", series_uid="2.1",
                   sop_instance_uid="3.1")
    row = led.record_refused(full)
    assert row == AuditRow("storage_full", {"outcome": MAJOR_FAILURE, "actor_ae": "SCU", "actor_address": "127.0.0.1",
                                            "study_uid": "1.1", "series_uid": "2.1", "status": "0xA700",
                                            "reason": "quota", "sop_instance_uid": "3.1"})
    assert led.record_refused(full) is None  # only logged from now on

    conflict = Refusal(StoreStatus.UID_CONFLICT, "moved", "sop_uid_conflict", conflict="sop_instance")
    row = led.record_refused(conflict)
    assert row is not None and row.event_type == "instance_conflict"
    assert row.detail["outcome"] == SERIOUS_FAILURE and row.detail["conflict"] == "sop_instance"
    assert "sop_instance_uid" not in row.detail

    row = led.record_refused(Refusal(StoreStatus.UNPARSEABLE, "garbage", "unparseable"))
    assert row is not None and (row.event_type, row.detail["status"]) == ("instance_rejected", "0xC210")
    assert led.totals["refused"] == 4


def test_the_closing_row_carries_totals_duration_and_the_reason():
    led = ledger()
    led.record_stored("2.1", "1.1", 10)
    released = led.closing_row("association_released", 1000, now=102.5)
    assert released == AuditRow("association_released", {
        "outcome": 0, "actor_ae": "SCU", "actor_address": "127.0.0.1", "duration_s": 2.5,
        "stored": 1, "duplicates": 0, "ignored": 0, "refused": 0, "bytes": 10})
    aborted = led.closing_row("association_aborted", 1000, now=103.0, reason="connection closed without release")
    assert aborted.detail["outcome"] == MINOR_FAILURE
    assert aborted.detail["reason"] == "connection closed without release"


def test_a_data_set_growing_past_the_limit_is_cut_off_once():
    led = ledger()
    command = b"\x03" + b"c" * 50  # message control header: command, last fragment
    data = b"\x00" + b"d" * 60  # data set fragment
    assert not led.feed_pdata([command, data, data], limit=150)
    assert led.incoming == 120
    assert not led.feed_pdata([b"", command], limit=150)  # a new message starts the count again
    assert led.incoming == 0
    assert not led.feed_pdata([data, data], limit=150)
    assert led.feed_pdata([data], limit=150)
    assert led.oversize and led.totals["refused"] == 1
    assert not led.feed_pdata([data], limit=150)  # counted once
    row = led.closing_row("association_aborted", 75, now=101.0)
    assert row.detail["reason"] == "data set larger than twice dicom.max_instance_bytes (75)"
    assert row.detail["refused"] == 1


class _Assoc:
    pass


def test_ledgers_cap_open_associations_and_close_each_once():
    book = Ledgers(max_associations=2)
    a, b, c = _Assoc(), _Assoc(), _Assoc()
    assert book.open(a, ledger()) and book.open(b, ledger())
    assert not book.open(c, ledger())  # the cap counts associations still negotiating too
    assert book.counts() == (0, 2)
    book.get(a).established = True
    assert book.counts() == (1, 1)

    assert book.close(b) is None  # never established: nothing to audit
    closed = book.close(a)
    assert closed is not None and closed.finalized
    assert book.close(a) is None and book.get(a) is None
    assert book.counts() == (0, 0)
    assert book.open(c, ledger()) and book.discard(c) is not None and book.discard(c) is None
