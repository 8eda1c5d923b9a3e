"""``dsm-node studies``: received studies, their revision, state and the series chosen."""
from __future__ import annotations

import argparse

from sqlalchemy import select

from ..db.models import Study, StudyState
from .common import add_data_dir, add_format, context_from_args, emit

COLUMNS = ["study_uid", "revision", "instances", "state", "selected_series", "reason", "last_received"]
STATES = [state.value for state in StudyState]


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--state", choices=STATES, help="only studies in this state")
    parser.add_argument("--limit", type=int, help="at most this many, most recent first")
    add_format(parser, csv_ok=True)


def run(args: argparse.Namespace) -> int:
    ctx = context_from_args(args)
    try:
        stmt = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc())
        if args.state:
            stmt = stmt.where(Study.state == args.state)
        if args.limit:
            stmt = stmt.limit(args.limit)
        with ctx.sessions() as session:
            rows = [
                {
                    "study_uid": s.study_uid,
                    "revision": s.revision,
                    "instances": s.instance_count,
                    "state": s.state,
                    "selected_series": s.selected_series_uid,
                    "reason": s.state_reason or s.selection_reason,
                    "last_received": s.last_received_at,
                }
                for s in session.scalars(stmt)
            ]
    finally:
        ctx.close()
    emit(rows, args.fmt, COLUMNS)
    return 0
