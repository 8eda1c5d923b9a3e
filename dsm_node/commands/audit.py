"""``dsm-node audit``: the audit trail as a table, JSON or CSV, or sent to syslog."""
from __future__ import annotations

import argparse

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
    add_format(parser, csv_ok=True)


def run(args: argparse.Namespace) -> int:
    ctx = context_from_args(args)
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
