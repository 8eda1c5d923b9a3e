"""dsm-train: phantoms, data checks, Stage-1/Stage-2 training, evaluation, export.

  dsm-train phantoms --out DIR --n N --seed S [--dicom] [--spacing MM] [--tumors all|seen|unseen|none]
                     [--fov FOV] [--phase PHASE]
  dsm-train make-list --dataset KEY --root DIR --out LIST [--val-fraction F]
  dsm-train check-data --list LIST [--root DIR]
  dsm-train stage1 --config YAML [--resume auto|PATH|none] [--stop-after STEPS] [--time-budget MIN] [--set key=value ...]
  dsm-train stage2 --config YAML --init STAGE1.pt [...]
  dsm-train eval [--checkpoint CKPT] --data LIST|phantom:SEED:N[:TUMOURS[:SPACING]]|real --out DIR
  dsm-train export --checkpoint FINAL.pt|STATE.pt --out weights/dsm-small-demo.pt [--version V]
  dsm-train calibrate [--checkpoint CKPT] --data phantom:SEED:N[:seen|all|none]|LIST --out NEW.pt [--version V]
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with ``configure(parser)`` and ``run(args) -> int``, help). The modules import
# torch and monai inside ``run`` only, so ``dsm-train --help`` does not load them.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("training.commands.phantoms", "write synthetic CT phantoms (NIfTI pairs, optional DICOM) and a list"),
    "make-list": ("training.commands.make_list", "build a dataset list from a registry layout"),
    "check-data": ("training.commands.check_data", "validate files of a dataset list against the registry"),
    "stage1": ("training.commands.stage1", "train Stage 1"),
    "stage2": ("training.commands.stage2", "train Stage 2"),
    "eval": ("training.commands.eval", "evaluate a checkpoint (DSC, AUROC, FPR95) and write reports"),
    "export": ("training.commands.export",
               "copy a final checkpoint (or a training state) into a release file (optionally fp16 weights)"),
    "calibrate": ("training.commands.calibrate",
                  "measure a weights file's thresholds (per class, zero-shot per organ) again on validation cases"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, (module, help_text) in COMMANDS.items():
        s = sub.add_parser(name, help=help_text)
        importlib.import_module(module).configure(s)
        s.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
