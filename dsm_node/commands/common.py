"""Helpers shared by the sub-commands: settings from flags, context, output formats."""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from typing import Any, Iterable

from ..context import NodeContext, build_context
from ..settings import ConfigError, Settings, load_settings


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="spool + SQLite database + logs under this folder (storage.data_dir)")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"storage.data_dir": getattr(args, "data_dir", None), **extra}
    try:
        return load_settings(getattr(args, "config", None), overrides)
    except ConfigError as exc:
        print(f"dsm-node: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def context_from_args(args: argparse.Namespace, **extra: Any) -> NodeContext:
    return build_context(settings_from_args(args, **extra))


def parse_time(text: str) -> dt.datetime:
    """ISO time, or a relative '15m', '2h', '3d' back from now (UTC)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def emit(rows: list[dict[str, Any]], fmt: str, columns: Iterable[str]) -> None:
    cols = list(columns)
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})
    else:
        widths = {c: max([len(c)] + [len(_cell(r.get(c))) for r in rows]) for c in cols}
        print("  ".join(c.upper().ljust(widths[c]) for c in cols))
        for row in rows:
            print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in cols))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula (CSV injection: a peer's AE title such as
    ``=cmd|'/c calc'!A``) gets a leading apostrophe; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def add_format(parser: argparse.ArgumentParser, csv_ok: bool = False) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", dest="fmt", action="store_const", const="json", help="machine-readable JSON")
    if csv_ok:
        group.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="CSV")
    parser.set_defaults(fmt="table")
