"""``dsm-train check-data``: validate the files of a dataset list against the registry.

Exit codes: 0 every check passed, 1 a problem was found (the report says which).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", required=True)
    parser.add_argument("--root", default=None)
    parser.add_argument("--json", default=None, help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..checks import check_data

    report = check_data(Path(args.list), Path(args.root) if args.root else None)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1
