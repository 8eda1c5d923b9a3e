"""End-to-end latency: last instance sent -> SEG + SR stored at the destination, per stage.

    .venv/bin/python bench/e2e.py [--checkpoint CKPT] [--skip-phantom]

Cases: the 79-slice real CT of ../shared/data/01 (when present) and a 300-slice 512x512 phantom
study, on the node's default device (CPU here). The quiet period is 2 s and reported apart.

Peer, same run: `dsm-node infer STUDY` (the same model on the same files, read from disk, no
network, database or queue). The ratio node (after the quiet period) / peer segmentation time
is the price of the service around the model: assembly, jobs, audit, encoding and delivery.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsm_node.demo import SHARED_CT, phantom_study, run_once  # noqa: E402


def offline_peer(study: Path, out: Path, checkpoint: Path | None) -> tuple[float, float]:
    """`dsm-node infer` on the same study: (wall time of the whole command, its segmentation
    time). The wall time includes process start, model load and the NIfTI/PNG outputs the node
    does not write; the segmentation time (preprocessing + sliding window + post-processing) is
    the model's share that the node's inference stage also pays."""
    cmd = [sys.executable, "-m", "dsm_node.cli", "infer", str(study), "--out", str(out)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return wall, float(summary["timings_s"]["inference_total_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--skip-phantom", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dsm-bench-e2e-"))
    cases = []
    if SHARED_CT.is_dir():
        cases.append(("real CT, 79 slices", SHARED_CT))
    else:
        print("../shared/data/01 not present: real-CT case skipped")
    if not args.skip_phantom:
        cases.append(("phantom, 300 slices 512x512", phantom_study(work / "phantom300", slices=300, size=512)))
    rows = []
    for name, study in cases:
        print(f"running: {name} ...", flush=True)
        slug = name.split(",")[0].replace(" ", "_")
        r = run_once(study, work / slug, 2.0, args.checkpoint)
        wall, seg = offline_peer(study, work / f"{slug}_infer", args.checkpoint)
        r["peer_infer_wall_s"], r["peer_segmentation_s"] = round(wall, 1), round(seg, 1)
        rows.append((name, r))
        print(json.dumps({k: v for k, v in r.items() if k not in ("segments", "received")}, indent=1))
    print("\n| case | instances | after quiet period (s) | assembly | inference | encoding | selection+queue+delivery "
          "| node peak RSS, with its inference child (MB) | peer `dsm-node infer` wall (s) | peer segmentation (s) "
          "| node / peer segmentation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        s = r["stages_s"]
        print(f"| {name} | {r['instances']} | {r['after_quiet_period_s']} | {s['assembly']} | {s['inference']} | "
              f"{s['encoding']} | {r['other_s']} | {r['node_peak_rss_mb']} | {r['peer_infer_wall_s']} | "
              f"{r['peer_segmentation_s']} | {r['after_quiet_period_s'] / r['peer_segmentation_s']:.2f} |")
    print("(quiet period 2 s not included; CPU; model", rows[0][1]["model_version"] if rows else "-", ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
