"""``dsm-train phantoms``: write synthetic CT phantoms (NIfTI pairs, optional DICOM) and their list."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=None, help="isotropic mm (default: a random clinical grid)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid size X Y Z")
    parser.add_argument("--tumours", default="all", help="all | seen | unseen | none | comma list of types")
    parser.add_argument("--dataset", default="phantom_all", help="registry key written into the list")
    parser.add_argument("--val", type=int, default=0, help="mark the last N cases split=val")
    parser.add_argument("--dicom", action="store_true", help="also write each image as a DICOM CT series")
    from ..phantom.body import FIELDS_OF_VIEW, PHASE_P  # numpy and scipy only: the choices for --help

    parser.add_argument("--fov", choices=sorted(FIELDS_OF_VIEW), default=None,
                        help="field of view for every phantom (default: drawn per phantom)")
    parser.add_argument("--phase", choices=sorted(PHASE_P), default=None,
                        help="contrast phase for every phantom (default: drawn per phantom)")


def run(args: argparse.Namespace) -> int:
    from ..phantom_files import write_phantom_set

    rows = write_phantom_set(Path(args.out), args.n, args.seed, spacing=args.spacing, shape=args.shape,
                             tumours=args.tumours, dataset=args.dataset, dicom=args.dicom, val=args.val,
                             fov=args.fov, phase=args.phase)
    print(f"wrote {len(rows)} phantoms to {args.out} (list: {Path(args.out) / 'datalist.csv'})")
    return 0
