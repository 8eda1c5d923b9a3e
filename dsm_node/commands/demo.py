"""``dsm-node demo`` (``make demo``): the node's whole loop on this machine, once.

    dsm-node demo [--study DIR] [--out DIR] [--quiet-period S] [--checkpoint CKPT]

A node on embedded defaults (a child ``dsm-node serve`` in a temporary folder), a local PACS
stand-in on 127.0.0.1, one study sent: the real CT of ../shared/data/01 when present, else a
generated phantom study. Waits for the SEG + SR, prints segments, volumes and timings, and leaves
the results, ``summary.json`` and overlay PNGs under --out. The loop itself is dsm_node/demo.py.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

#: The demo node writes its own configuration (embedded defaults + the local receiver as its
#: destination): a ``--config`` would not be used, so the command does not offer one.
CONFIG_OPTION = False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=Path, help="folder of one CT series to send "
                        "(default: the real CT of ../shared/data/01 when present, else a phantom study)")
    parser.add_argument("--out", type=Path, default=Path("var") / "demo",
                        help="where to leave results and PNGs (default: var/demo)")
    parser.add_argument("--quiet-period", type=float, default=2.0,
                        help="seconds without a new instance before the study counts as complete (default: 2)")
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled demo weights")


def run(args: argparse.Namespace) -> int:
    from ..demo import SHARED_CT, overlays_from_results, phantom_study, run_once

    work = Path(tempfile.mkdtemp(prefix="dsm-demo-"))
    study = args.study
    if study is None:
        study = SHARED_CT if SHARED_CT.is_dir() else phantom_study(work / "phantom")
    print(f"sending {study} to a node on embedded defaults (quiet period {args.quiet_period} s) ...", flush=True)
    report = run_once(study, work, args.quiet_period, args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = []
    if "SEG" in report["received"]:
        pngs = overlays_from_results(study, Path(report["received"]["SEG"]), args.out / "overlays")
    for kind, path in report["received"].items():
        target = args.out / f"{kind}.dcm"
        target.write_bytes(Path(path).read_bytes())
        report["received"][kind] = str(target)
    report["overlays"] = [str(p) for p in pngs]
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"\nmodel {report['model_version']}: {len(report['segments'])} segments")
    for seg in report["segments"]:
        print(f"  {seg['name']:<32} {seg['volume_ml']:>9.1f} ml")
    print(f"\ntimes: send {report['send_s']} s, quiet period {report['quiet_period_s']} s, then "
          f"{report['after_quiet_period_s']} s to SEG + SR at the receiver "
          f"(assembly {report['stages_s']['assembly']} s, inference {report['stages_s']['inference']} s, "
          f"encoding {report['stages_s']['encoding']} s, selection/queue/delivery {report['other_s']} s)")
    print(f"node peak RSS {report['node_peak_rss_mb']} MB")
    print(f"results and overlay PNGs in {args.out} (DEMONSTRATION model: not for diagnostic use)")
    return 0
