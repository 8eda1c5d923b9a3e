"""``dsm-node audit``: the audit trail as a table, JSON or CSV, sent to syslog, or verified.

``--verify`` walks the hash chain (dsm_node.audit_chain) and exits 1 when rows were deleted,
altered or written around the node; ``--anchor SEQ:HASH`` (repeatable) also checks positions
against hashes kept outside the database (the JSON log, the syslog collector).
"""
from __future__ import annotations

import argparse
import sys

from ..audit import query_events
from .common import add_data_dir, add_format, context_from_args, emit, parse_time

COLUMNS = ["time", "event_type", "event_code", "outcome", "actor_ae", "actor_address", "study_uid", "series_uid", "detail"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--since", help="ISO time or relative (30m, 2h, 7d)")
    parser.add_argument("--type", dest="event_type", help="only this event type (e.g. association_rejected)")
    parser.add_argument("--study", help="only this Study Instance UID")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--syslog", action="store_true", help="send the selected events to the configured syslog (RFC 5424)")
    parser.add_argument("--verify", action="store_true",
                        help="check the hash chain: report deleted, altered or foreign rows (exit 1 if any)")
    parser.add_argument("--anchor", action="append", default=[], metavar="SEQ:HASH",
                        help="with --verify: a chain position and its hash as seen outside the database")
    add_format(parser, csv_ok=True)


def run(args: argparse.Namespace) -> int:
    ctx = context_from_args(args)
    if args.verify:
        return _verify(ctx, args.anchor)
    with ctx.sessions() as session:
        events = query_events(
            session,
            since=parse_time(args.since) if args.since else None,
            event_type=args.event_type,
            study_uid=args.study,
            limit=args.limit,
        )
    if args.syslog:
        from ..syslog import SyslogSender, event_kind

        sender = SyslogSender(ctx.settings.audit.syslog, app_name=ctx.settings.dicom.ae_title)
        for event in events:
            sender.send(event, event_kind(event.event_type))
        print(f"sent {len(events)} events to {ctx.settings.audit.syslog.host}:{ctx.settings.audit.syslog.port}")
        return 0
    rows = [{c: getattr(e, c) for c in COLUMNS} for e in events]
    emit(rows, args.fmt, COLUMNS)
    return 0


def _verify(ctx, anchors: list[str]) -> int:  # noqa: ANN001
    from ..audit_chain import verify

    try:
        parsed = [(int(seq), digest.strip().lower()) for seq, _, digest in (a.partition(":") for a in anchors)]
    except ValueError:
        print("dsm-node audit: --anchor takes SEQ:HASH", file=sys.stderr)
        return 2
    with ctx.sessions() as session:
        report = verify(session, parsed)
    ctx.close()
    for problem in report.problems:
        print(f"TAMPERED: {problem}")
    state = "intact" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"audit chain: {report.rows} rows, head at position {report.head_seq}: {state}")
    return 0 if report.ok else 1
