"""``dsm-node deliveries``: the outbox, one row per (result, destination), newest first."""
from __future__ import annotations

import argparse

from sqlalchemy import select

from ..db.models import Delivery, DeliveryState, Result
from .common import add_data_dir, add_format, context_from_args, emit

COLUMNS = [
    "id", "kind", "sop_instance_uid", "destination", "target", "state", "attempts",
    "next_attempt", "last_status", "last_error", "delivered_at",
]
_STATES = [DeliveryState.PENDING, DeliveryState.IN_PROGRESS, DeliveryState.DELIVERED, DeliveryState.DEAD]


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--state", choices=_STATES, help="only rows in this state (dead = the dead letters)")
    parser.add_argument("--limit", type=int, help="at most this many rows")
    add_format(parser, csv_ok=True)


def run(args: argparse.Namespace) -> int:
    ctx = context_from_args(args)
    stmt = select(Delivery, Result.kind, Result.sop_instance_uid).join(Result).order_by(Delivery.id.desc())
    if args.state:
        stmt = stmt.where(Delivery.state == args.state)
    if args.limit:
        stmt = stmt.limit(args.limit)
    with ctx.sessions() as session:
        rows = [
            {
                "id": d.id,
                "kind": kind,
                "sop_instance_uid": sop_uid,
                "destination": d.destination,
                "target": f"{d.ae_title}@{d.host}:{d.port}",
                "state": d.state,
                "attempts": d.attempts,
                # For a row being sent this is its lease expiry: when it is retried if the
                # sender dies. Finished rows have no next attempt.
                "next_attempt": d.next_attempt_at if d.state in (DeliveryState.PENDING, DeliveryState.IN_PROGRESS) else None,
                "last_status": d.last_status,
                "last_error": d.last_error,
                "delivered_at": d.delivered_at,
            }
            for d, kind, sop_uid in session.execute(stmt)
        ]
    ctx.close()
    emit(rows, args.fmt, COLUMNS)
    return 0
