"""``dsm-train export``: a final checkpoint (or a training state) as a release file."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="final.pt, or a training state checkpoints/step_*.pt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--version", default=None)
    parser.add_argument("--labelled-datasets", default=None, metavar="D[,D...]",
                        help="registry datasets that trained these weights (both stages), for a file written "
                             "before checkpoints recorded the classes they were trained on: organ classes "
                             "none of them labels are then not drawn")
    parser.add_argument("--half", action="store_true", help="store floating weights as float16 (halves the size)")


def run(args: argparse.Namespace) -> int:
    from ..export import export_weights

    path = export_weights(Path(args.checkpoint), Path(args.out), args.version, args.half,
                          [d for d in args.labelled_datasets.split(",") if d] if args.labelled_datasets else None)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
