"""``dsm-train phantoms``: write synthetic CT phantoms (NIfTI pairs, optional DICOM) and their list."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _DeprecatedOption(argparse.Action):
    """An option's old name: stores into the new one's dest and says so on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=None, help="isotropic mm (default: a random clinical grid)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid size X Y Z")
    parser.add_argument("--tumors", default="all", help="all | seen | unseen | none | comma list of types")
    # The British spelling of earlier releases, kept so that existing scripts still run.
    parser.add_argument("--tumours", dest="tumors", action=_DeprecatedOption, new="--tumors", help=argparse.SUPPRESS)
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
                             tumors=args.tumors, dataset=args.dataset, dicom=args.dicom, val=args.val,
                             fov=args.fov, phase=args.phase)
    print(f"wrote {len(rows)} phantoms to {args.out} (list: {Path(args.out) / 'datalist.csv'})")
    return 0
