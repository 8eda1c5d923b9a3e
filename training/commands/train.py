"""What ``dsm-train stage1`` and ``dsm-train stage2`` share: their options and the run."""
from __future__ import annotations

import argparse
import json

import yaml


def parse_set(values: list[str]) -> dict[str, object]:
    """``--set key=value ...`` as config overrides (dotted keys, YAML values)."""
    out: dict[str, object] = {}
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


def configure_stage(parser: argparse.ArgumentParser, stage: int) -> None:
    parser.add_argument("--config", required=True)
    if stage == 2:
        parser.add_argument("--init", default=None, help="Stage-1 checkpoint (final.pt or a training state)")
    parser.add_argument("--resume", default="auto", help="auto (out_dir/checkpoints/last.pt if present) | none | PATH")
    parser.add_argument("--stop-after", type=int, default=None, help="save and exit after this optimizer step")
    parser.add_argument("--device", default=None)
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                        help="time the first steps and train only as many as fit in MINUTES (schedule re-planned)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value (dotted keys)")
    parser.add_argument("--trust-legacy-checkpoint", action="store_true",
                        help="load --init/--resume files that need full unpickling (only files you wrote yourself "
                             "with an earlier dsm-train); by default only tensors and plain data are loaded")


def run_stage(args: argparse.Namespace, stage: int) -> int:
    """Train ``stage`` with the config of ``args``; refuses (SystemExit with the reason) a config
    of the other stage, and Stage 2 without a Stage-1 checkpoint to start from."""
    from ..config import load_train_config
    from ..trainer import train

    overrides = parse_set(args.set)
    cfg = load_train_config(args.config, overrides)
    if cfg.stage != stage:
        raise SystemExit(f"{args.config} is a Stage-{cfg.stage} config; use 'dsm-train stage{cfg.stage}'")
    init = getattr(args, "init", None)
    if stage == 2 and not (init or cfg.init):
        raise SystemExit("stage2 needs --init STAGE1.pt (or 'init:' in the config)")
    resume: object = True if args.resume == "auto" else (False if args.resume == "none" else args.resume)
    budget = args.time_budget * 60 if args.time_budget else None
    summary = train(cfg, init=init, resume=resume, stop_after=args.stop_after, device=args.device,
                    time_budget_s=budget, trust_legacy=args.trust_legacy_checkpoint)
    print(json.dumps(summary, indent=2, default=str))
    return 0
