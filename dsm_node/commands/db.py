"""``dsm-node db upgrade|current``: schema migrations (Alembic)."""
from __future__ import annotations

import argparse

from ..db.engine import current_revision, upgrade
from .common import add_data_dir, settings_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("action", choices=["upgrade", "current"])
    parser.add_argument("--revision", default="head", help="target revision for upgrade")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url
    if args.action == "upgrade":
        upgrade(url, args.revision)
    print(f"database revision: {current_revision(url) or 'empty'}")
    return 0
