"""dsm-train: phantoms, data checks, Stage-1/Stage-2 training, evaluation, export.

  dsm-train phantoms --out DIR --n N --seed S [--dicom] [--spacing MM] [--tumours all|seen|unseen|none]
                     [--fov FOV] [--phase PHASE]
  dsm-train make-list --dataset KEY --root DIR --out LIST [--val-fraction F]
  dsm-train check-data --list LIST [--root DIR]
  dsm-train stage1 --config YAML [--resume auto|PATH|none] [--stop-after STEPS] [--time-budget MIN] [--set key=value ...]
  dsm-train stage2 --config YAML --init STAGE1.pt [...]
  dsm-train eval [--checkpoint CKPT] --data LIST|phantom:SEED:N[:TUMOURS[:SPACING]]|real --out DIR
  dsm-train export --checkpoint FINAL.pt|STATE.pt --out weights/dsm-small-demo.pt [--version V]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _parse_set(values: list[str]) -> dict:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise SystemExit(f"--set expects key=value, got {v!r}")
        k, raw = v.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):
            # YAML 1.1 reads "5e-4" (no dot) as a string; users mean the number.
            try:
                value = float(value)
            except ValueError:
                pass
        out[k] = value
    return out


def cmd_phantoms(a: argparse.Namespace) -> int:
    from .phantom_files import write_phantom_set

    rows = write_phantom_set(Path(a.out), a.n, a.seed, spacing=a.spacing, shape=a.shape, tumours=a.tumours,
                             dataset=a.dataset, dicom=a.dicom, val=a.val, fov=a.fov, phase=a.phase)
    print(f"wrote {len(rows)} phantoms to {a.out} (list: {Path(a.out) / 'datalist.csv'})")
    return 0


def cmd_make_list(a: argparse.Namespace) -> int:
    from .checks import make_list

    n = make_list(a.dataset, Path(a.root), Path(a.out), a.val_fraction, a.seed)
    print(f"wrote {n} cases to {a.out}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .checks import check_data

    report = check_data(Path(a.list), Path(a.root) if a.root else None)
    print(report.text())
    if a.json:
        Path(a.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


def cmd_train(a: argparse.Namespace, stage: int) -> int:
    from .config import load_train_config
    from .trainer import train

    overrides = _parse_set(a.set)
    cfg = load_train_config(a.config, overrides)
    if cfg.stage != stage:
        raise SystemExit(f"{a.config} is a Stage-{cfg.stage} config; use 'dsm-train stage{cfg.stage}'")
    init = getattr(a, "init", None)
    if stage == 2 and not (init or cfg.init):
        raise SystemExit("stage2 needs --init STAGE1.pt (or 'init:' in the config)")
    resume: object = True if a.resume == "auto" else (False if a.resume == "none" else a.resume)
    budget = a.time_budget * 60 if a.time_budget else None
    summary = train(cfg, init=init, resume=resume, stop_after=a.stop_after, device=a.device, time_budget_s=budget,
                    trust_legacy=a.trust_legacy_checkpoint)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_WEIGHTS, evaluate

    summary = evaluate(Path(a.checkpoint) if a.checkpoint else DEFAULT_WEIGHTS, a.data, Path(a.out),
                       root=a.root, device=a.device, overlays=a.overlays, dilation_mm=a.dilation_mm,
                       max_cases=a.max_cases, save_labels=a.save_labels)
    keys = ("organ_dsc_mean", "seen_tumor_dsc_mean", "unseen_tumor_dsc_mean", "unseen_tumor_auroc_mean",
            "unseen_tumor_fpr95_mean", "unseen_tumor_auroc_dilated_mean", "abdominal_above_diaphragm_ml_max",
            "checkpoint_sha256")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_weights

    path = export_weights(Path(a.checkpoint), Path(a.out), a.version, a.half)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("phantoms", help="write synthetic CT phantoms (NIfTI pairs, optional DICOM) and a list")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spacing", type=float, default=None, help="isotropic mm (default: a random clinical grid)")
    s.add_argument("--shape", type=int, nargs=3, default=None, help="grid size X Y Z")
    s.add_argument("--tumours", default="all", help="all | seen | unseen | none | comma list of types")
    s.add_argument("--dataset", default="phantom_all", help="registry key written into the list")
    s.add_argument("--val", type=int, default=0, help="mark the last N cases split=val")
    s.add_argument("--dicom", action="store_true", help="also write each image as a DICOM CT series")
    from .phantom.body import FIELDS_OF_VIEW, PHASE_P  # numpy only

    s.add_argument("--fov", choices=sorted(FIELDS_OF_VIEW), default=None,
                   help="field of view for every phantom (default: drawn per phantom)")
    s.add_argument("--phase", choices=sorted(PHASE_P), default=None,
                   help="contrast phase for every phantom (default: drawn per phantom)")
    s.set_defaults(func=cmd_phantoms)

    s = sub.add_parser("make-list", help="build a dataset list from a registry layout")
    s.add_argument("--dataset", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--val-fraction", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_make_list)

    s = sub.add_parser("check-data", help="validate files of a dataset list against the registry")
    s.add_argument("--list", required=True)
    s.add_argument("--root", default=None)
    s.add_argument("--json", default=None, help="also write the report as JSON")
    s.set_defaults(func=cmd_check)

    for stage in (1, 2):
        s = sub.add_parser(f"stage{stage}", help=f"train Stage {stage}")
        s.add_argument("--config", required=True)
        if stage == 2:
            s.add_argument("--init", default=None, help="Stage-1 checkpoint (final.pt or a training state)")
        s.add_argument("--resume", default="auto", help="auto (out_dir/checkpoints/last.pt if present) | none | PATH")
        s.add_argument("--stop-after", type=int, default=None, help="save and exit after this optimizer step")
        s.add_argument("--device", default=None)
        s.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                       help="time the first steps and train only as many as fit in MINUTES (schedule re-planned)")
        s.add_argument("--set", nargs="*", default=[], help="config overrides key=value (dotted keys)")
        s.add_argument("--trust-legacy-checkpoint", action="store_true",
                       help="load --init/--resume files that need full unpickling (only files you wrote yourself "
                            "with an earlier dsm-train); by default only tensors and plain data are loaded")
        s.set_defaults(func=lambda a, st=stage: cmd_train(a, st))

    s = sub.add_parser("eval", help="evaluate a checkpoint (DSC, AUROC, FPR95) and write reports")
    s.add_argument("--checkpoint", default=None, help="default: weights/dsm-small-demo.pt")
    s.add_argument("--data", required=True, help="dataset list CSV, phantom:SEED:N[:TUMOURS[:SPACING]], or 'real' "
                   "(the real CTs of ../shared/data or $DSM_SHARED_DATA; --root overrides; evaluation only)")
    s.add_argument("--root", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default=None)
    s.add_argument("--overlays", type=int, default=3, help="number of overlay PNGs")
    s.add_argument("--dilation-mm", type=float, default=10.0,
                   help="dilation of the parent envelope for the secondary OOD region")
    s.add_argument("--max-cases", type=int, default=None)
    s.add_argument("--save-labels", action="store_true", help="also write each case's labels as NIfTI (labels/)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="copy a final checkpoint (or a training state) into a release file "
                                      "(optionally fp16 weights)")
    s.add_argument("--checkpoint", required=True, help="final.pt, or a training state checkpoints/step_*.pt")
    s.add_argument("--out", required=True)
    s.add_argument("--version", default=None)
    s.add_argument("--half", action="store_true", help="store floating weights as float16 (halves the size)")
    s.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
