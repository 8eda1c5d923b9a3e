"""End-to-end latency: last instance sent -> SEG + SR stored at the destination, per stage.

    .venv/bin/python bench/e2e.py [--checkpoint CKPT] [--skip-phantom]

Cases: the 79-slice real CT of ../shared/data/01 (when present) and a 300-slice 512x512 phantom
study, on the node's default device (CPU here). The quiet period is 2 s and reported apart.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsm_node.demo import SHARED_CT, phantom_study, run_once  # noqa: E402


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
        r = run_once(study, work / name.split(",")[0].replace(" ", "_"), 2.0, args.checkpoint)
        rows.append((name, r))
        print(json.dumps({k: v for k, v in r.items() if k not in ("segments", "received")}, indent=1))
    print("\n| case | instances | after quiet period (s) | assembly | inference | encoding | selection+queue+delivery | node peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        s = r["stages_s"]
        print(f"| {name} | {r['instances']} | {r['after_quiet_period_s']} | {s['assembly']} | {s['inference']} | "
              f"{s['encoding']} | {r['other_s']} | {r['node_peak_rss_mb']} |")
    print("(quiet period 2 s not included; CPU; model", rows[0][1]["model_version"] if rows else "-", ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
