"""``dsm-train stage2``: train Stage 2 (options and run shared with stage1: train.py)."""
from __future__ import annotations

import argparse

from .train import configure_stage, run_stage


def configure(parser: argparse.ArgumentParser) -> None:
    configure_stage(parser, 2)


def run(args: argparse.Namespace) -> int:
    return run_stage(args, 2)
