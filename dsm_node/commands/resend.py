"""``dsm-node resend``: re-arm dead-lettered (or already delivered) deliveries.

The rows become pending and due now with their attempt count reset; a running node sends them
on its next pass. Each re-armed row is audited as ``delivery_resend`` with the operator: the OS
account the command runs as (its uid, looked up in the password database), never ``$USER``,
which anyone can set.
"""
from __future__ import annotations

import argparse
import sys

from ..db.engine import transaction
from ..delivery.outbox import rearm
from .common import add_data_dir, context_from_args, operator_identity


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids (see `dsm-node deliveries`)")
    parser.add_argument("--all-dead", action="store_true", help="every dead-lettered delivery")


def run(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dead):
        print("dsm-node resend: give delivery IDs or --all-dead (not both)", file=sys.stderr)
        return 2
    ctx = context_from_args(args)
    operator, uid = operator_identity()
    with transaction(ctx.sessions) as session:
        rearmed, refused = rearm(session, args.ids, all_dead=args.all_dead)
        for row in rearmed:
            result = row.result
            ctx.auditor.record(
                "delivery_resend", session=session, actor_ae=row.ae_title, actor_address=row.host or None,
                study_uid=result.job.study.study_uid, series_uid=result.series_uid, delivery_id=row.id,
                destination=row.destination, sop_instance_uid=result.sop_instance_uid, kind=result.kind,
                operator=operator, operator_uid=uid,
            )
    ctx.close()
    for row in rearmed:
        print(f"{row.id}: re-armed ({row.destination}, {row.result.kind} {row.result.sop_instance_uid})")
    for delivery_id, reason in sorted(refused.items()):
        print(f"{delivery_id}: not re-armed: {reason}", file=sys.stderr)
    print(f"re-armed {len(rearmed)} deliveries")
    return 1 if refused else 0
