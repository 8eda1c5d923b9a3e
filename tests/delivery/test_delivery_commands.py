"""`dsm-node deliveries` and `dsm-node resend` as an operator uses them."""
from __future__ import annotations

import datetime as dt
import json

from dsm_node.commands import deliveries, resend
from dsm_node.db.engine import transaction
from dsm_node.db.models import Delivery, DeliveryState, utcnow
from dsm_node.delivery.outbox import claim_due
from tests.delivery.conftest import pacs


def _node_with_states(make_node, result_files):
    """Three results for one destination: one delivered, one dead, one pending."""
    node = make_node(destinations=[pacs(11112)])
    node.add_results([result_files[k] for k in ("SEG", "SR", "SC")])
    seg, sr, _ = node.rows()
    with transaction(node.ctx.sessions) as s:
        s.get(Delivery, seg.id).state = DeliveryState.DELIVERED
        s.get(Delivery, seg.id).delivered_at = utcnow()
        dead = s.get(Delivery, sr.id)
        dead.state, dead.attempts, dead.last_status, dead.last_error = DeliveryState.DEAD, 5, "0xA700", "out of resources"
    return node


def test_deliveries_lists_the_outbox(make_node, result_files):
    node = _node_with_states(make_node, result_files)
    rc, out, _ = node.cli(deliveries, "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["kind"] for r in rows] == ["SC", "SR", "SEG"]  # newest first
    sc, sr, seg = rows
    assert set(sc) == set(deliveries.COLUMNS)
    assert (sc["state"], sc["target"], sc["next_attempt"] is not None) == ("pending", "PACS@127.0.0.1:11112", True)
    assert (sr["state"], sr["attempts"], sr["last_status"], sr["last_error"]) == ("dead", 5, "0xA700", "out of resources")
    assert (seg["state"], seg["next_attempt"], seg["delivered_at"] is not None) == ("delivered", None, True)
    assert sr["sop_instance_uid"] == result_files["SR"].sop_instance_uid

    rc, out, _ = node.cli(deliveries, "--json", "--state", "dead")
    assert [r["id"] for r in json.loads(out)] == [sr["id"]]
    rc, out, _ = node.cli(deliveries)
    assert rc == 0 and out.splitlines()[0].split()[:3] == ["ID", "KIND", "SOP_INSTANCE_UID"]


def test_resend_rearms_dead_and_delivered_rows_and_refuses_others(make_node, result_files):
    node = _node_with_states(make_node, result_files)
    seg, sr, sc = node.rows()
    now = utcnow()
    with transaction(node.ctx.sessions) as s:  # the SC row is being sent right now
        assert [c.id for c in claim_due(s, now, 10, now + dt.timedelta(minutes=5))] == [sc.id]

    rc, out, err = node.cli(resend, str(seg.id), str(sr.id), str(sc.id), "999")
    assert rc == 1
    assert "re-armed 2" in out
    assert f"{sc.id}: not re-armed: it is in_progress" in err and "999: not re-armed: no such delivery" in err
    rows = {r.id: r for r in node.rows()}
    for i in (seg.id, sr.id):
        assert (rows[i].state, rows[i].attempts, rows[i].delivered_at) == (DeliveryState.PENDING, 0, None)
    assert rows[sc.id].state == DeliveryState.IN_PROGRESS
    assert sorted(e.detail["delivery_id"] for e in node.events("delivery_resend")) == [seg.id, sr.id]

    assert node.cli(resend)[0] == 2  # neither ids nor --all-dead
    rc, out, _ = node.cli(resend, "--all-dead")
    assert rc == 0 and "re-armed 0" in out


def test_resend_records_the_os_account_not_the_user_variable(make_node, result_files, monkeypatch):
    import os
    import pwd

    node = _node_with_states(make_node, result_files)
    _, sr, _ = node.rows()
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):  # what getpass.getuser() would believe
        monkeypatch.setenv(name, "chief-radiologist")
    assert node.cli(resend, str(sr.id))[0] == 0
    (event,) = node.events("delivery_resend")
    assert event.detail["operator"] == pwd.getpwuid(os.geteuid()).pw_name != "chief-radiologist"
    assert event.detail["operator_uid"] == os.geteuid()
