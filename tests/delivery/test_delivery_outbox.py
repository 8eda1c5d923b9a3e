"""The outbox rules that need no network: back-off, idempotent enqueue, destination resolution,
leases."""
from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from pydicom.uid import generate_uid

from dsm_node.db.engine import transaction
from dsm_node.db.models import Delivery, DeliveryState, Study, utcnow
from dsm_node.delivery import enqueue, resolve_destinations
from dsm_node.delivery.outbox import (
    LEASE_EXPIRED,
    SENDER_ENDED,
    backoff_delay,
    claim_due,
    holders_in_progress,
    reclaim_expired,
)
from dsm_node.settings import load_settings
from tests.delivery.conftest import pacs


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens():
    rng = random.Random(1)
    for attempt, nominal in [(1, 10), (2, 20), (3, 40), (7, 640), (8, 900), (30, 900)]:
        delays = [backoff_delay(attempt, 10, 900, rng) for _ in range(200)]
        assert all(0.8 * nominal <= d <= nominal for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > 0.1 * nominal  # it is jittered, not constant


def test_enqueue_is_idempotent(make_node, result_files):
    node = make_node(destinations=[pacs(11112), pacs(11113, name="archive", ae_title="ARCHIVE")])
    seg = node.add_results([result_files["SEG"]])[0]
    first = node.rows()
    assert sorted(r.destination for r in first) == ["archive", "pacs"]
    assert {r.state for r in first} == {DeliveryState.PENDING}
    with transaction(node.ctx.sessions) as s:
        result = s.merge(seg)
        again = enqueue(s, result, resolve_destinations(node.ctx.settings, result.job.study))
    assert sorted(r.id for r in again) == sorted(r.id for r in first)
    assert len(node.rows()) == 2


def _settings(**delivery):
    peers = [
        {"ae_title": "MODALITY", "networks": ["10.1.0.0/16"], "port": 104},
        {"ae_title": "NOPORT", "networks": ["10.2.0.0/16"]},
    ]
    overrides = {"dicom.peers": peers, "delivery.reply_to_caller": True}
    overrides.update({f"delivery.{k}": v for k, v in delivery.items()})
    return load_settings(overrides=overrides)


@pytest.mark.parametrize(
    "calling_ae, address, expected",
    [
        ("MODALITY", "10.1.2.3", ("caller:MODALITY", "MODALITY", "10.1.2.3", 104, None)),
        ("MODALITY", "10.1.2.3:50123", ("caller:MODALITY", "MODALITY", "10.1.2.3", 104, None)),
        ("MODALITY", "192.168.9.9", ("caller:MODALITY", "MODALITY", "192.168.9.9", 0, "no dicom.peers entry")),
        ("NOPORT", "10.2.0.7", ("caller:NOPORT", "NOPORT", "10.2.0.7", 0, "no dicom.peers entry")),
        (None, "10.1.2.3", ("caller:?", "UNKNOWN", "10.1.2.3", 0, "no calling AE title")),
    ],
)
def test_reply_to_caller_uses_the_peers_configured_port(calling_ae, address, expected):
    (target,) = resolve_destinations(_settings(), Study(study_uid="1.2", calling_ae=calling_ae, peer_address=address))
    name, ae, host, port, problem = expected
    assert (target.name, target.ae_title, target.host, target.port) == (name, ae, host, port)
    assert (problem is None and target.problem is None) or problem in target.problem


def test_reply_to_caller_is_not_added_twice_when_the_caller_is_a_configured_destination():
    settings = _settings(destinations=[pacs(104, name="pacs", ae_title="MODALITY")])
    targets = resolve_destinations(settings, Study(study_uid="1.2", calling_ae="MODALITY", peer_address="10.1.2.3"))
    assert [t.name for t in targets] == ["pacs"]
    # A different application on the same host is a separate destination.
    targets = resolve_destinations(settings, Study(study_uid="1.2", calling_ae="NOPORT", peer_address="10.2.0.7"))
    assert [t.name for t in targets] == ["pacs", "caller:NOPORT"]


def test_expired_leases_return_to_pending_or_dead_and_live_ones_stay(make_node, result_files):
    node = make_node(destinations=[pacs(11112)], max_attempts=2)
    files = [dataclasses.replace(result_files["SEG"], sop_instance_uid=generate_uid()) for _ in range(3)]
    node.add_results(files)
    now = utcnow()
    with transaction(node.ctx.sessions) as s:
        expired = claim_due(s, now, 2, lease_until=now - dt.timedelta(seconds=1))
        live = claim_due(s, now, 1, lease_until=now + dt.timedelta(minutes=5))
    assert [c.attempt for c in expired + live] == [1, 1, 1]
    with transaction(node.ctx.sessions) as s:  # the first expired row has used its last attempt
        s.get(Delivery, expired[0].id).attempts = 2
    with transaction(node.ctx.sessions) as s:
        reclaimed = reclaim_expired(s, utcnow(), max_attempts=2)
    assert sorted(reclaimed) == [(expired[0].id, DeliveryState.DEAD, 2, LEASE_EXPIRED),
                                 (expired[1].id, DeliveryState.PENDING, 1, LEASE_EXPIRED)]
    states = {r.id: (r.state, r.last_status) for r in node.rows()}
    assert states[live[0].id] == (DeliveryState.IN_PROGRESS, None)
    assert states[expired[1].id] == (DeliveryState.PENDING, "interrupted")


def test_leases_of_an_ended_sender_return_at_once_and_others_stay(make_node, result_files):
    node = make_node(destinations=[pacs(11112)], max_attempts=5)
    node.add_results([dataclasses.replace(result_files["SEG"], sop_instance_uid=generate_uid()) for _ in range(2)])
    now, lease = utcnow(), utcnow() + dt.timedelta(minutes=5)
    with transaction(node.ctx.sessions) as s:
        dead_senders = claim_due(s, now, 1, lease_until=lease, holder="host:1:aaaaaa")
        live_senders = claim_due(s, now, 1, lease_until=lease, holder="host:2:bbbbbb")
        assert sorted(holders_in_progress(s)) == ["host:1:aaaaaa", "host:2:bbbbbb"]
    with transaction(node.ctx.sessions) as s:
        reclaimed = reclaim_expired(s, utcnow(), max_attempts=5, ended_holders=["host:1:aaaaaa"])
    assert reclaimed == [(dead_senders[0].id, DeliveryState.PENDING, 1, SENDER_ENDED)]
    rows = {r.id: r for r in node.rows()}
    assert (rows[dead_senders[0].id].claimed_by, rows[dead_senders[0].id].last_error) == (None, SENDER_ENDED)
    assert (rows[live_senders[0].id].state, rows[live_senders[0].id].claimed_by) == (DeliveryState.IN_PROGRESS,
                                                                                     "host:2:bbbbbb")


def test_reply_to_caller_uses_tls_when_studies_arrive_over_tls(tmp_path):
    from dsm_node.delivery.targets import target_for_row

    files = {k: tmp_path / f"{k}.pem" for k in ("cert", "key", "ca")}
    node_tls = {"enabled": True, "cert_file": str(files["cert"]), "key_file": str(files["key"]),
                "ca_file": str(files["ca"])}
    study = Study(study_uid="1.2", calling_ae="MODALITY", peer_address="10.1.2.3")
    (plain,) = resolve_destinations(_settings(), study)
    assert plain.tls is None  # the node takes plain TCP: replies are plain too
    settings = load_settings(overrides={"dicom.peers": [{"ae_title": "MODALITY", "networks": ["10.1.0.0/16"], "port": 104}],
                                        "dicom.tls": node_tls, "delivery.reply_to_caller": True})
    (target,) = resolve_destinations(settings, study)
    assert target.tls is not None and target.tls.enabled
    assert (target.tls.cert_file, target.tls.key_file, target.tls.ca_file) == (files["cert"], files["key"], files["ca"])
    # A row re-read from the outbox gets the same transport.
    again = target_for_row(settings, target.name, target.ae_title, target.host, target.port)
    assert again.tls == target.tls
    forced_off = settings.model_copy(update={"delivery": settings.delivery.model_copy(update={"reply_tls": "off"})})
    assert resolve_destinations(forced_off, study)[0].tls is None
    with pytest.raises(Exception, match="reply_tls 'on' needs dicom.tls.cert_file"):
        _settings(reply_tls="on")
