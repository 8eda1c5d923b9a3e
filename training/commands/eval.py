"""``dsm-train eval``: evaluate a checkpoint (DSC, AUROC, FPR95) and write reports."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

#: The headline figures printed at the end (the whole summary is in the reports).
HEADLINE = ("organ_dsc_mean", "seen_tumor_dsc_mean", "unseen_tumor_dsc_mean", "unseen_tumor_auroc_mean",
            "unseen_tumor_fpr95_mean", "unseen_tumor_auroc_dilated_mean", "false_zero_shot_tumor_ml_mean",
            "abdominal_above_diaphragm_ml_max",
            "checkpoint_sha256")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="default: weights/dsm-small-demo.pt")
    parser.add_argument("--data", required=True,
                        help="dataset list CSV, phantom:SEED:N[:TUMOURS[:SPACING]], or 'real' "
                             "(the real CTs of ../shared/data or $DSM_SHARED_DATA; --root overrides; evaluation only)")
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--overlays", type=int, default=3, help="number of overlay PNGs")
    parser.add_argument("--dilation-mm", type=float, default=10.0,
                        help="dilation of the parent envelope for the secondary OOD region")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--save-labels", action="store_true", help="also write each case's labels as NIfTI (labels/)")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import DEFAULT_WEIGHTS, evaluate

    summary = evaluate(Path(args.checkpoint) if args.checkpoint else DEFAULT_WEIGHTS, args.data, Path(args.out),
                       root=args.root, device=args.device, overlays=args.overlays, dilation_mm=args.dilation_mm,
                       max_cases=args.max_cases, save_labels=args.save_labels)
    print(json.dumps({k: summary[k] for k in HEADLINE if k in summary}, indent=2))
    return 0
