"""``dsm-node check-config``: the effective configuration (secrets masked) or a precise error."""
from __future__ import annotations

import argparse
import sys

import yaml

from ..settings import ConfigError, config_warnings, env_overrides_present, load_settings, masked_dump
from .common import add_data_dir


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, {"storage.data_dir": args.data_dir})
    except ConfigError as exc:
        print(f"dsm-node: {exc}", file=sys.stderr)
        return 2
    print(f"# effective configuration (file: {args.config or 'none, built-in defaults'})")
    env = env_overrides_present()
    if env:
        print(f"# environment overrides: {', '.join(env)}")
    print(yaml.safe_dump(masked_dump(settings), sort_keys=False), end="")
    for warning in config_warnings(settings, args.config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0
