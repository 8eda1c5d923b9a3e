"""A hash chain over the audit trail, so that deleted or altered rows show.

Every audit row carries its position in the chain (``chain_seq``: 1, 2, 3 ... without gaps),
the hash of the row before it (``chain_prev``) and its own hash (``chain_hash`` = SHA-256 of
``chain_prev`` and the row's content). A one-row table, ``audit_chain``, holds the position and
hash of the last row. ``dsm-node audit --verify`` walks the chain:

* a row whose content no longer matches its hash: **altered**;
* a gap in the positions, or a row whose ``chain_prev`` is not its predecessor's hash:
  **deleted** (or inserted) rows;
* the head further than the last row: rows deleted **at the end**;
* a row without a position: written around the node (by hand).

Rows get their place in the chain when their transaction commits (a ``before_commit`` hook):
the head row is locked by an UPDATE there, which serialises audit writers across processes
(PostgreSQL) as SQLite's write lock already does, and because it is always the last lock a
transaction takes, it cannot deadlock with the rows the transaction touched before.

Limits: anyone who can write to the database can also recompute the whole chain after a change.
The hashes leave the database with each event (JSON log, syslog ``ChainSeq``/``ChainHash``);
``--verify --anchor SEQ:HASH`` checks the chain against such a copy.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db.models import AuditChain, AuditEvent, utcnow

log = logging.getLogger("dsm_node.audit")

GENESIS = "0" * 64
HEAD_ID = 1
_PENDING = "dsm_audit_pending"  # Session.info key: the audit events added in this transaction


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(event: AuditEvent) -> bytes:
    """The row's content as hashed: every column but the id and the chain's own hash."""
    content = {
        "seq": event.chain_seq,
        "time": _stamp(event.time),
        "event_type": event.event_type,
        "event_code": event.event_code,
        "event_action": event.event_action,
        "outcome": event.outcome,
        "actor_ae": event.actor_ae,
        "actor_address": event.actor_address,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "detail": event.detail or {},
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()


def row_hash(prev: str, event: AuditEvent) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + canonical(event)).hexdigest()


def pending(session: Session) -> list[AuditEvent]:
    return session.info.setdefault(_PENDING, [])


def seal(session: Session) -> list[AuditEvent]:
    """Give the audit rows of this transaction their place in the chain (before commit)."""
    events = list(dict.fromkeys([*pending(session), *(o for o in session.new if isinstance(o, AuditEvent))]))
    events = [e for e in events if e.chain_seq is None]
    if not events:
        return []
    locked = session.execute(
        update(AuditChain).where(AuditChain.id == HEAD_ID).values(seq=AuditChain.seq + len(events)),
        execution_options={"synchronize_session": False},
    )
    if locked.rowcount == 0:  # the head row is gone: rebuild it from the last chained row
        last = session.execute(
            select(AuditEvent.chain_seq, AuditEvent.chain_hash).where(AuditEvent.chain_seq.is_not(None))
            .order_by(AuditEvent.chain_seq.desc()).limit(1)
        ).first()
        log.error("audit chain head missing: rebuilt from the last chained row (audit --verify will tell)")
        session.add(AuditChain(id=HEAD_ID, seq=(last[0] if last else 0) + len(events), hash=last[1] if last else GENESIS))
        session.flush()
    seq, prev = session.execute(select(AuditChain.seq, AuditChain.hash).where(AuditChain.id == HEAD_ID)).one()
    seq -= len(events)
    for event in events:
        seq += 1
        event.time = event.time or utcnow()
        event.detail = event.detail or {}
        event.chain_seq, event.chain_prev = seq, prev
        event.chain_hash = prev = row_hash(prev, event)
    session.execute(update(AuditChain).where(AuditChain.id == HEAD_ID).values(hash=prev),
                    execution_options={"synchronize_session": False})
    return events


@dataclass
class Verification:
    rows: int = 0
    head_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(session: Session, anchors: Iterable[tuple[int, str]] = (), batch: int = 5000) -> Verification:
    """Walk the whole chain (streamed in id order per batch of positions)."""
    report = Verification()
    unchained = session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.chain_seq.is_(None)))
    if unchained:
        ids = session.scalars(select(AuditEvent.id).where(AuditEvent.chain_seq.is_(None)).limit(10)).all()
        report.problems.append(f"{unchained} row(s) outside the chain (written around the node), e.g. id {list(ids)}")
    expected = dict(anchors)
    prev_seq, prev_hash = 0, GENESIS
    after = 0
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.chain_seq > after).order_by(AuditEvent.chain_seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            report.rows += 1
            seq = row.chain_seq
            if seq != prev_seq + 1:
                report.problems.append(f"rows deleted: chain positions {prev_seq + 1}..{seq - 1} missing")
            elif row.chain_prev != prev_hash:
                report.problems.append(f"chain broken before position {seq} (id {row.id}): rows replaced or reordered")
            if row_hash(row.chain_prev or "", row) != row.chain_hash:
                report.problems.append(f"row altered: position {seq} (id {row.id}, {row.event_type})")
            if seq in expected and expected.pop(seq) != row.chain_hash:
                report.problems.append(f"position {seq} differs from its anchor: the chain was rewritten")
            prev_seq, prev_hash = seq, row.chain_hash or ""
        after = prev_seq
        session.expunge_all()
    for seq in sorted(expected):
        report.problems.append(f"anchor position {seq} is not in the chain")
    head = session.execute(select(AuditChain.seq, AuditChain.hash).where(AuditChain.id == HEAD_ID)).first()
    if head is None:
        report.problems.append("the chain head (audit_chain) is missing")
    else:
        report.head_seq = head[0]
        if head[0] > prev_seq:
            report.problems.append(f"rows deleted at the end: chain positions {prev_seq + 1}..{head[0]} missing")
        elif head[0] < prev_seq or head[1] != prev_hash:
            report.problems.append(f"the chain head (position {head[0]}) does not match the last row ({prev_seq})")
    return report
