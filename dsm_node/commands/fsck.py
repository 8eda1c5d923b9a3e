"""``dsm-node fsck``: check that the spool and the index describe the same instances.

Files without a row are indexed (a consistent instance with an unknown SOP Instance UID) or moved
to ``DATA_DIR/quarantine`` (anything else); rows without a file are marked. The same check runs
at every start of the node; this command runs it on demand, also while the node runs. Exit
codes: 0 nothing found, 1 something found (and repaired unless ``--dry-run``), 2 the spool looks
unavailable (nothing changed).
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import add_data_dir, context_from_args, emit, operator_login


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--dry-run", action="store_true", help="report only: index, move and mark nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable report")


def run(args: argparse.Namespace) -> int:
    from ..receive.reconcile import SpoolUnavailable, fsck

    ctx = context_from_args(args)
    try:
        report = fsck(ctx, repair=not args.dry_run, mode="command", operator=operator_login())
    except SpoolUnavailable as exc:
        print(f"dsm-node fsck: {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    summary = report.as_dict()
    problems = [{"path": path, "problem": why} for path, why in sorted(report.problems.items())]
    if args.json:
        json.dump({"dry_run": args.dry_run, **summary, "problems": problems}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        verb = "would be " if args.dry_run else ""
        print(f"spool {ctx.spool_dir}: {report.already_indexed} instances consistent")
        print(f"files without a row: {len(report.orphan_files)} ({report.indexed} indexed, "
              f"{len(report.quarantined)} {verb}quarantined to {ctx.settings.storage.data_dir / 'quarantine'})")
        print(f"rows without a file: {len(report.missing_files)} ({verb}marked)")
        print(f"interrupted writes: {report.temp_files_completed} completed, {report.temp_files_removed} removed")
        if problems:
            emit(problems, "table", ["path", "problem"])
    return 0 if report.clean else 1

