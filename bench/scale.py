"""Memory and time of `dsm-node infer` as the slice count grows (150 to 1,000 slices).

    .venv/bin/python bench/scale.py [--slices 150,300,600,1000] [--work DIR] [--tag NAME]
                                    [--checkpoint CKPT] [--no-overlays] [--prepare-only]

Studies: ONE phantom (training/phantoms, "trunk_thighs" field of view, so that the body fills
every slice) on a 512 x 512 grid of 0.78 mm pixels and 1.5 mm slices, as many slices as the
largest size asked for; each size is its central run of slices, written as a CT series with
the phantom's DICOM writer. They are kept in ``--work`` (default: a new folder under the
system temp dir, on disk) and reused when the same folder is given again, so a BEFORE and an
AFTER run read the same files.

Each size runs `dsm-node infer STUDY --out DIR` in a child process (its own Python, model
load included). Reported per size: the stage seconds of its summary.json, the child's wall
time and its peak RSS (``ru_maxrss`` of that child alone, from ``os.wait4``), and the growth
ratios against the smallest size. The outputs stay in ``WORK/out-TAG-N`` (labels.nii.gz for
identity checks between runs) and the table in ``WORK/scale-TAG.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PIXEL_MM = 0.78
SLICE_MM = 1.5
SIZE = 512
STAGES = ("read_s", "model_load_s", "preprocess_s", "inference_s", "postprocess_s", "nifti_s", "seg_s", "sr_s",
          "key_images_s", "overlays_s")


def write_studies(work: Path, sizes: list[int], seed: int) -> dict[int, Path]:
    """One phantom as large as the largest size; each size its central slices (files reused)."""
    import numpy as np

    folders = {n: work / f"study-{n}" for n in sizes}
    todo = [n for n in sizes if not (work / f"study-{n}.done").exists()]
    if not todo:
        return folders
    from training.phantom.writers import write_dicom_series
    from training.phantoms import make_phantom

    total = max(sizes)
    t0 = time.perf_counter()
    image, _label, affine = make_phantom(seed, shape=(SIZE, SIZE, total), spacing=(PIXEL_MM, PIXEL_MM, SLICE_MM),
                                         fov="trunk_thighs")
    print(f"phantom {SIZE}x{SIZE}x{total} generated in {time.perf_counter() - t0:.0f} s", flush=True)
    for n in todo:
        start = (total - n) // 2
        shifted = np.array(affine, dtype=np.float64)
        shifted[:3, 3] = affine[:3, 3] + start * affine[:3, 2]
        write_dicom_series(image[:, :, start:start + n], shifted, folders[n], uid_seed=f"scale-{seed}-{n}",
                           patient_name="PHANTOM^SCALE", patient_id="PHANTOM-SCALE")
        (work / f"study-{n}.done").write_text("complete\n")
        print(f"wrote {n} slices to {folders[n]}", flush=True)
    return folders


def run_infer(study: Path, out: Path, checkpoint: Path | None, no_overlays: bool) -> dict:
    """`dsm-node infer` in a child: its summary timings, wall time and peak RSS (MB)."""
    cmd = [sys.executable, "-m", "dsm_node", "infer", str(study), "--out", str(out)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    if no_overlays:
        cmd.append("--no-overlays")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if out.exists():  # a rerun of the same tag: no files of the previous run left beside the new ones
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = out / "infer.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"dsm-node infer failed on {study} (exit {child.returncode}); see {log}:\n"
                         + log.read_text()[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "timings": summary["timings_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="150,300,600,1000", help="comma-separated slice counts")
    parser.add_argument("--work", type=Path, help="folder for the studies and outputs (reused if given again)")
    parser.add_argument("--tag", default="run", help="name of this run's outputs (e.g. before, after)")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prepare-only", action="store_true", help="write the studies and stop")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.slices.split(",") if s.strip()})
    work = args.work or Path(tempfile.mkdtemp(prefix="dsm-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    studies = write_studies(work, sizes, args.seed)
    if args.prepare_only:
        return 0

    rows = []
    for n in sizes:
        print(f"dsm-node infer: {n} slices ...", flush=True)
        r = run_infer(studies[n], work / f"out-{args.tag}-{n}", args.checkpoint, args.no_overlays)
        r["slices"] = n
        rows.append(r)
        print(json.dumps(r), flush=True)
    (work / f"scale-{args.tag}.json").write_text(json.dumps(rows, indent=1))

    base = rows[0]
    cols = [s for s in STAGES if any(s in r["timings"] for r in rows)]
    print(f"\n`dsm-node infer`, {SIZE}x{SIZE} at {PIXEL_MM} mm, {SLICE_MM} mm slices ({args.tag}; seconds)")
    print("| slices | " + " | ".join(c.removesuffix("_s") for c in cols)
          + " | wall | peak RSS (MB) | RSS ratio | wall ratio | segmentation ratio | slices ratio |")
    print("|---" * (len(cols) + 7) + "|")
    for r in rows:
        t = r["timings"]
        seg, seg0 = t.get("inference_total_s", 0.0), base["timings"].get("inference_total_s", 0.0)
        print(f"| {r['slices']} | " + " | ".join(f"{t.get(c, 0.0):.1f}" for c in cols)
              + f" | {r['wall_s']:.1f} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
              f" | {r['wall_s'] / base['wall_s']:.2f} | {seg / seg0 if seg0 else 0:.2f} | {r['slices'] / base['slices']:.2f} |")
    print(f"(outputs and studies in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
