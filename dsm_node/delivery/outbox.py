"""The outbox: one ``deliveries`` row per (result, destination), and every change of its state.

    pending --claim--> in_progress --success/warning--> delivered
                                   --failure, attempts left--> pending (due after a back-off)
                                   --failure, none left, or permanent--> dead
    in_progress whose lease expired (sender killed mid-send) --> pending, or dead
    in_progress whose sender's process ended (known at once) --> pending, or dead
    dead / delivered / pending --resend--> pending with attempts reset

Two rules make this safe with several processes on one database:

- While a row is in_progress, ``next_attempt_at`` holds its lease expiry (the schema has no
  separate column, and a due time means nothing for a row being sent) and ``claimed_by`` the
  sender (dsm_node.liveness.HOLDER). A sender extends the lease as it works; a row whose lease
  ran out, or whose sender's process is known to have ended, is taken back by whoever notices.
- The claim increments ``attempts``, so (id, attempts) identifies one claim. Every later
  update is conditional on that pair still being in_progress: a sender that lost its lease
  changes nothing. Counting at claim time also means a result that kills its sender every
  time still reaches the dead letter instead of looping forever.
"""
from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..audit import MAJOR_FAILURE, Auditor
from ..db.models import Delivery, DeliveryState, Result, utcnow
from ..settings import Settings
from .scu import Outcome
from .targets import Target, resolve_destinations

UNRESOLVED = "unresolved"
INTERRUPTED = "interrupted"
JITTER = 0.2  # a retry's wait is shortened by up to this fraction
_TABLE = Delivery.__table__
_RESENDABLE = (DeliveryState.DEAD, DeliveryState.DELIVERED, DeliveryState.PENDING)


@dataclass(frozen=True, order=True)
class Claim:
    """One claimed row: ``attempt`` is the attempts value the claim set (the fencing token)."""

    id: int
    attempt: int


# Enqueue --------------------------------------------------------------------------------------
def enqueue(session: Session, result: Result, destinations: Sequence[Target], auditor: Auditor | None = None) -> list[Delivery]:
    """Create the missing outbox rows for ``result``; return all its rows for these destinations.

    Idempotent: calling it again (a retried pipeline step, two workers) creates nothing new,
    thanks to the unique (result, destination) constraint. A target with a ``problem`` becomes
    a dead row carrying the reason, audited as a dead letter, so an operator sees it and can
    resend after fixing the configuration.
    """
    session.flush()  # the result needs its id
    if not destinations:
        return []
    now = utcnow()
    values = [
        {
            "result_id": result.id,
            "destination": t.name,
            "ae_title": t.ae_title,
            "host": t.host,
            "port": t.port,
            "state": DeliveryState.DEAD if t.problem else DeliveryState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_status": UNRESOLVED if t.problem else None,
            "last_error": t.problem,
            "created_at": now,
        }
        for t in destinations
    ]
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[session.get_bind().dialect.name]
    stmt = dialect.insert(_TABLE).values(values).on_conflict_do_nothing(index_elements=["result_id", "destination"])
    created = set(session.scalars(stmt.returning(_TABLE.c.id)))
    session.expire(result, ["deliveries"])  # a collection loaded earlier would miss the new rows
    names = [t.name for t in destinations]
    rows = list(
        session.scalars(
            select(Delivery).where(Delivery.result_id == result.id, Delivery.destination.in_(names)).order_by(Delivery.id)
        )
    )
    if auditor is not None:
        for row in rows:
            if row.id in created and row.state == DeliveryState.DEAD:
                auditor.record(
                    "delivery_dead_letter", outcome=MAJOR_FAILURE, session=session,
                    actor_ae=row.ae_title, actor_address=row.host or None,
                    study_uid=result.job.study.study_uid, series_uid=result.series_uid,
                    delivery_id=row.id, destination=row.destination, status=row.last_status, error=row.last_error,
                    attempt=0, sop_instance_uid=result.sop_instance_uid, kind=result.kind,
                )
    return rows


def enqueue_results(
    session: Session, settings: Settings, results: Iterable[Result], auditor: Auditor | None = None
) -> list[Delivery]:
    """What the pipeline calls, in the transaction that records its results."""
    rows: list[Delivery] = []
    for result in results:
        rows += enqueue(session, result, resolve_destinations(settings, result.job.study), auditor)
    return rows


# Claiming and leases --------------------------------------------------------------------------
def claim_due(session: Session, now: dt.datetime, limit: int, lease_until: dt.datetime,
              holder: str | None = None) -> list[Claim]:
    """Atomically take up to ``limit`` due pending rows for this sender.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED locks the candidates, so concurrent senders
    take disjoint rows without waiting for each other, then they are updated. (The lock must be
    taken by its own statement: as a subquery of the UPDATE, PostgreSQL may run it once per row
    and ignore the LIMIT.) SQLite has no row locks but runs a whole UPDATE under its single
    write lock, so one UPDATE whose subquery picks the candidates is the claim. Either way the
    ``state = 'pending'`` condition is checked by the UPDATE itself and RETURNING reports only
    the rows this sender changed.
    """
    due = (
        select(_TABLE.c.id)
        .where(_TABLE.c.state == DeliveryState.PENDING, _TABLE.c.next_attempt_at <= now)
        .order_by(_TABLE.c.next_attempt_at, _TABLE.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates: Any = list(session.scalars(due.with_for_update(skip_locked=True)))
        if not candidates:
            return []
    else:
        candidates = due.scalar_subquery()
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.id.in_(candidates), _TABLE.c.state == DeliveryState.PENDING)
        .values(state=DeliveryState.IN_PROGRESS, attempts=_TABLE.c.attempts + 1, next_attempt_at=lease_until,
                claimed_by=holder)
        .returning(_TABLE.c.id, _TABLE.c.attempts)
    )
    return sorted(Claim(id, attempt) for id, attempt in session.execute(stmt))


def extend_lease(session: Session, claims: Sequence[Claim], until: dt.datetime) -> None:
    if claims:
        session.execute(
            update(_TABLE).where(_owned(claims), _TABLE.c.state == DeliveryState.IN_PROGRESS).values(next_attempt_at=until)
        )


def release(session: Session, claims: Sequence[Claim], now: dt.datetime) -> None:
    """Give back claimed rows that were never sent (shutdown): no attempt is charged."""
    if claims:
        session.execute(
            update(_TABLE)
            .where(_owned(claims), _TABLE.c.state == DeliveryState.IN_PROGRESS)
            .values(state=DeliveryState.PENDING, attempts=_TABLE.c.attempts - 1, next_attempt_at=now)
        )


LEASE_EXPIRED = "the sender stopped before recording an outcome (lease expired)"
SENDER_ENDED = "the sender stopped before recording an outcome (its process ended)"


def reclaim_expired(session: Session, now: dt.datetime, max_attempts: int,
                    ended_holders: Sequence[str] = ()) -> list[tuple[int, str, int, str]]:
    """Return in_progress rows whose lease ran out, or whose sender ended, to pending (dead when
    out of attempts).

    The sender of such a row was killed or hung; whether the PACS got the instance is unknown,
    so it is sent again (a repeated C-STORE of the same SOP Instance UID is harmless).
    ``ended_holders``: senders known to have ended (dsm_node.liveness), whose rows need not wait
    for their lease. Returns (id, new state, attempts, why) per row.
    """
    out = []
    for condition, why in ((_TABLE.c.next_attempt_at < now, LEASE_EXPIRED),
                           (_TABLE.c.claimed_by.in_(list(ended_holders)), SENDER_ENDED)):
        if why == SENDER_ENDED and not ended_holders:
            continue
        stmt = (
            update(_TABLE)
            .where(_TABLE.c.state == DeliveryState.IN_PROGRESS, condition)
            .values(
                state=case((_TABLE.c.attempts >= max_attempts, DeliveryState.DEAD), else_=DeliveryState.PENDING),
                next_attempt_at=now,
                last_status=INTERRUPTED,
                last_error=why,
                claimed_by=None,
            )
            .returning(_TABLE.c.id, _TABLE.c.state, _TABLE.c.attempts)
        )
        out += [(id, state, attempts, why) for id, state, attempts in session.execute(stmt)]
    return out


def holders_in_progress(session: Session) -> list[str]:
    """The senders holding in_progress rows now."""
    return list(session.scalars(
        select(_TABLE.c.claimed_by).where(_TABLE.c.state == DeliveryState.IN_PROGRESS, _TABLE.c.claimed_by.is_not(None))
        .distinct()
    ))


# Outcomes -------------------------------------------------------------------------------------
def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempt + 1``: doubling from ``initial_s``, capped at ``max_s``.

    The jitter only ever shortens the wait (by up to 20 %), so the cap holds and the schedule
    never stretches beyond what the operator configured, while nodes that lost the same PACS at
    the same moment do not all come back at the same instant.
    """
    nominal = min(max_s, initial_s * 2 ** max(0, attempt - 1))
    return nominal * (1 - JITTER * (rng or random).random())


def retry_waits(max_attempts: int, initial_s: float, max_s: float) -> list[float]:
    """The nominal waits between ``max_attempts`` attempts (without jitter, which only shortens
    them by up to 20 %): what docs/delivery.md states for the defaults."""
    return [min(max_s, initial_s * 2 ** (attempt - 1)) for attempt in range(1, max_attempts)]


def record_outcome(
    session: Session,
    claim: Claim,
    outcome: Outcome,
    target: Target,
    *,
    now: dt.datetime,
    max_attempts: int,
    retry_in_s: float,
) -> str | None:
    """Apply one attempt's outcome; the new state, or None when the claim was lost meanwhile."""
    values: dict[str, object] = {
        "last_status": outcome.status,
        "last_error": outcome.error,
        "ae_title": target.ae_title,
        "host": target.host,
        "port": target.port,
    }
    if outcome.delivered:
        values.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif outcome.permanent or claim.attempt >= max_attempts:
        values.update(state=DeliveryState.DEAD, next_attempt_at=now)
    else:
        values.update(state=DeliveryState.PENDING, next_attempt_at=now + dt.timedelta(seconds=retry_in_s))
    result = session.execute(update(_TABLE).where(_owned([claim]), _TABLE.c.state == DeliveryState.IN_PROGRESS).values(**values))
    return str(values["state"]) if result.rowcount == 1 else None


# Operator actions -----------------------------------------------------------------------------
def rearm(session: Session, ids: Sequence[int] = (), all_dead: bool = False) -> tuple[list[Delivery], dict[int, str]]:
    """Make rows due again with attempts reset: (re-armed rows, {id: why refused})."""
    stmt = select(Delivery).with_for_update()
    stmt = stmt.where(Delivery.state == DeliveryState.DEAD) if all_dead else stmt.where(Delivery.id.in_(list(ids)))
    rows = {row.id: row for row in session.scalars(stmt.order_by(Delivery.id))}
    refused = {i: "no such delivery" for i in ids if i not in rows}
    rearmed = []
    now = utcnow()
    for row in rows.values():
        if row.state not in _RESENDABLE:
            refused[row.id] = f"it is {row.state} (being sent now)"
        elif row.result.deleted_at is not None:
            refused[row.id] = "its result file was removed by retention"
        else:
            row.state, row.attempts, row.next_attempt_at = DeliveryState.PENDING, 0, now
            row.last_status = row.last_error = row.delivered_at = None
            rearmed.append(row)
    return rearmed, refused


def _owned(claims: Sequence[Claim]) -> ColumnElement[bool]:
    return tuple_(_TABLE.c.id, _TABLE.c.attempts).in_([(c.id, c.attempt) for c in claims])
