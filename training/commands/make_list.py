"""``dsm-train make-list``: a dataset list (CSV) from a registry layout."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..checks import make_list

    n = make_list(args.dataset, Path(args.root), Path(args.out), args.val_fraction, args.seed)
    print(f"wrote {n} cases to {args.out}")
    return 0
