"""Helpers shared by the sub-commands: settings from flags, context, output formats."""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import pwd
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..context import NodeContext, build_context
from ..db.engine import current_revision
from ..settings import ConfigError, Settings, display_url, load_settings


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
    """The node's existing database, for an operator command (studies, audit, deliveries,
    resend, fsck): says on stderr which one it opened, and never creates one -- run in the wrong
    folder without ``--config``/``--data-dir``, a command would otherwise make an empty
    ``./var/dsm-node.db`` and print an empty table as if the node had nothing."""
    settings = settings_from_args(args, **extra)
    url = settings.database_url
    command = getattr(args, "command", None) or "dsm-node"
    prefix = f"dsm-node {command}" if command != "dsm-node" else command
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[-1])
        if not path.is_file():
            print(f"{prefix}: no node database at {path} (storage.data_dir is {settings.storage.data_dir}): "
                  "run it with the node's --config or --data-dir; nothing was created", file=sys.stderr)
            raise SystemExit(2)
    else:
        try:
            revision = current_revision(url)
        except Exception as exc:  # noqa: BLE001 - the operator needs the reason, not a traceback
            print(f"{prefix}: cannot open the database {display_url(url)}: {str(exc).splitlines()[0][:300]}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        if revision is None:
            print(f"{prefix}: the database {display_url(url)} holds no dsm-node tables: give the node's "
                  "--config (database.url); nothing was created", file=sys.stderr)
            raise SystemExit(2)
    print(f"{prefix}: database {display_url(url)}", file=sys.stderr)
    return build_context(settings, create_dirs=False)


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


def operator_identity() -> tuple[str, int]:
    """(account name, uid) of the effective user, from the password database — never ``$USER``,
    which anyone can set; the name is ``uid N`` when the uid has no entry (containers with
    arbitrary uids)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return f"uid {uid}", uid


def operator_login() -> str:
    """The operator's account name for audit rows written by a command (see operator_identity)."""
    return operator_identity()[0]
