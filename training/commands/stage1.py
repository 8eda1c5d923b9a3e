"""``dsm-train stage1``: train Stage 1 (options and run shared with stage2: train.py)."""
from __future__ import annotations

import argparse

from .train import configure_stage, run_stage


def configure(parser: argparse.ArgumentParser) -> None:
    configure_stage(parser, 1)


def run(args: argparse.Namespace) -> int:
    return run_stage(args, 1)
