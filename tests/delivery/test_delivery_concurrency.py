"""Several senders on one database: every row goes to exactly one of them."""
from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
import time
from collections import Counter

from pydicom.uid import generate_uid
from sqlalchemy import text

from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import DeliveryState, utcnow
from dsm_node.delivery import DeliveryService
from dsm_node.delivery.outbox import claim_due
from tests.delivery.conftest import pacs
from tests.delivery.delivery_objects import copy_as_new_instance
from tests.peers import ScriptedSCP
from tests.tools import free_port


def test_concurrent_claims_never_overlap(make_node, result_files, database_url):
    node = make_node(database_url=database_url, destinations=[pacs(11112), pacs(11113, name="archive", ae_title="ARCHIVE")])
    node.add_results([dataclasses.replace(result_files["SR"], sop_instance_uid=generate_uid()) for _ in range(30)])
    expected = {r.id for r in node.rows()}
    assert len(expected) == 60
    # Separate engines, as separate node processes would have.
    contexts = [build_context(node.ctx.settings) for _ in range(4)]
    claimed: list[list[int]] = [[] for _ in range(8)]
    sizes: list[int] = []
    start = threading.Barrier(8)

    def sender(slot: int) -> None:
        sessions = contexts[slot % 4].sessions
        with sessions() as s:  # connect before the start line, so that all begin together
            s.execute(text("SELECT 1"))
        start.wait()
        while True:
            now = utcnow()
            with transaction(sessions) as s:
                got = claim_due(s, now, 2, now + dt.timedelta(minutes=5))
                if database_url:  # hold the row locks: the other senders must skip these rows
                    time.sleep(0.005)
            if not got:
                return
            time.sleep(0.003)  # let a waiting sender in (SQLite's busy handler polls)
            sizes.append(len(got))
            claimed[slot] += [c.id for c in got]

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for ctx in contexts:
        ctx.close()
    every = [i for ids in claimed for i in ids]
    assert sorted(every) == sorted(expected)  # each row exactly once
    assert max(sizes) <= 2  # the claim honours its limit
    assert sum(1 for ids in claimed if ids) > 1  # the senders really competed
    assert {(r.state, r.attempts) for r in node.rows()} == {(DeliveryState.IN_PROGRESS, 1)}


def test_two_services_on_one_database_send_each_result_once(make_node, result_files, net, tmp_path, database_url):
    port = free_port()
    scp = ScriptedSCP(net, port).start()
    node = make_node(database_url=database_url, destinations=[pacs(port)])
    files = [copy_as_new_instance(result_files["SEG"], tmp_path) for _ in range(12)]
    node.add_results(files)
    contexts = [build_context(node.ctx.settings) for _ in range(2)]
    services = [DeliveryService(ctx, batch_size=4, rng=random.Random(i)) for i, ctx in enumerate(contexts)]
    attempted = [0, 0]
    start = threading.Barrier(2)

    def drain(i: int) -> None:
        start.wait()
        while n := services[i].run_once():
            attempted[i] += n

    threads = [net.thread(lambda i=i: drain(i)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        scp.stop()
        for ctx in contexts:
            ctx.close()
    assert sum(attempted) == 12
    assert Counter(scp.received) == Counter({f.sop_instance_uid: 1 for f in files})
    assert {(r.state, r.attempts) for r in node.rows()} == {(DeliveryState.DELIVERED, 1)}
    assert len(node.events("delivery_attempt")) == 12
