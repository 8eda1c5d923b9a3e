"""``dsm-train calibrate``: measure a weights file's calibration block again on validation cases."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="default: weights/dsm-small-demo.pt")
    parser.add_argument("--data", required=True,
                        help="validation cases: phantom:SEED:N[:TUMOURS[:SPACING]] (TUMOURS: seen (default), all "
                             "or none) or a dataset list CSV; never the real evaluation CTs")
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", required=True, help="the new weights file (same weights, new calibration)")
    parser.add_argument("--version", default=None, help="default: the source file's version")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import DEFAULT_WEIGHTS
    from ..export import recalibrate_weights

    path, cal = recalibrate_weights(Path(args.checkpoint) if args.checkpoint else DEFAULT_WEIGHTS, Path(args.out),
                                    args.data, args.version, args.root, args.device)
    keys = ("cases", "not_found", "zero_shot_threshold", "zero_shot_organs", "zero_shot_false_ml")
    print(json.dumps({k: cal[k] for k in keys if k in cal}, indent=2))
    print(f"wrote {path}")
    return 0
