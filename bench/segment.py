"""Seconds and peak memory of the one inference path (``model.segment.VolumeSegmenter``) on a
CT-sized volume: the paper configuration against the shipped small demo weights.

    .venv/bin/python bench/segment.py [--shape 512 512 300] [--configs paper,small]
                                      [--device auto] [--work DIR] [--json OUT]

Volume: one phantom (training/phantoms, "trunk_thighs" field of view, so that the body fills
every slice) on a 512 x 512 grid of 0.78 mm pixels and 1.5 mm slices, 300 slices by default,
as int16 HU like the node's series assembly; it is kept as ``WORK/volume-*.npz`` and reused
when the same ``--work`` is given again.

Configurations, each in a child process of its own (its peak RSS and GPU memory are its own):

* ``paper``: the paper configuration (model/configs/model_paper.yaml, Stage 2) with seeded
  random weights. Timing does not depend on the weights, except through the post-processing,
  which works on what the network found: the figure for the network is ``inference_s``.
* ``small``: the shipped demo weights (weights/dsm-small-demo.pt), the peer of every run.

Reported per configuration: the stage seconds of ``segment`` (preprocess, inference,
postprocess), the model-grid shape and window count, wall seconds of the whole call, peak RSS
of the child and, on CUDA, torch's peak allocated and reserved GPU memory. Inference runs in
bf16 autocast on CUDA (``VolumeSegmenter(amp=True)``, the node's default) and in float32 on
the CPU. One warm-up call on a small volume comes first (CUDA context, kernel selection).
The paper configuration on the CPU is slow (minutes on 2 cores): the default runs it only
when CUDA is present.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PIXEL_MM = 0.78
SLICE_MM = 1.5
SHIPPED = REPO / "weights" / "dsm-small-demo.pt"


def volume(work: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """The phantom as int16 HU + affine in WORK (generated once per shape and seed)."""
    import numpy as np

    path = work / f"volume-{shape[0]}x{shape[1]}x{shape[2]}-{seed}.npz"
    if path.exists():
        return path
    from training.phantoms import make_phantom

    t0 = time.perf_counter()
    image, _label, affine = make_phantom(seed, shape=shape, spacing=(PIXEL_MM, PIXEL_MM, SLICE_MM),
                                         fov="trunk_thighs")
    hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    np.savez(path, hu=hu, affine=affine)
    print(f"phantom {'x'.join(map(str, shape))} generated in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return path


def random_checkpoint(config: str, path: Path) -> Path:
    """A Stage-2 checkpoint of ``config`` with seeded random weights (timing only)."""
    import torch

    from model.catalog import load_catalog
    from model.checkpoint import save_checkpoint
    from model.config import load_model_config
    from model.network import DSMNet
    from model.text import load_default_table

    torch.manual_seed(0)
    catalog = load_catalog()
    table = load_default_table()
    embeddings = torch.stack([table.get(p) for p in catalog.prompt_names])  # type: ignore[misc]
    return save_checkpoint(path, DSMNet(load_model_config(config)), catalog, embeddings,
                           version=f"bench-random-{config}")


def windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Sliding-window count as MONAI plans it (each axis: ceil((n - roi) / step) + 1)."""
    n = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        step = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((size - r) / step) + 1 if size > r else 1
    return n


def run_case(config: str, volume_path: Path, device: str, work: Path) -> dict:
    """One configuration in this process: a warm-up call, then the timed call."""
    import numpy as np
    import torch

    from model.segment import VolumeSegmenter

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    ckpt = SHIPPED if config == "small" else random_checkpoint(config, work / f"random-{config}.pt")
    seg = VolumeSegmenter.from_checkpoint(ckpt, device=device)
    data = np.load(volume_path)
    hu, affine = data["hu"], data["affine"]
    cuda = seg.device.type == "cuda"
    # Warm-up on a small block of the same volume: CUDA context, cuDNN/Triton kernel choice.
    seg.segment(hu[:, :, : max(8, hu.shape[2] // 10)], affine, want_anomaly=False, keep_model_output=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = seg.segment(hu, affine, want_anomaly=True, keep_model_output=False)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    s = seg.settings
    box = result.model_output.box
    crop = tuple(b.stop - b.start for b in box)
    out = {
        "config": config,
        "checkpoint": str(ckpt.name),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "amp": "bf16" if seg.amp and torch.cuda.is_bf16_supported() else ("fp16" if seg.amp else "fp32"),
        "source_shape": list(hu.shape),
        "model_spacing_mm": list(s.spacing),
        "model_crop_shape": list(crop),
        "roi": list(s.roi_size),
        "overlap": s.overlap,
        "windows": windows(crop, s.roi_size, s.overlap),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "classes_found": len(result.found),
    }
    if cuda:
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def run_child(config: str, volume_path: Path, device: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", config, "--volume", str(volume_path), "--device", device,
           "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{config}: the child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(r: dict) -> str:
    t = r["timings_s"]
    gpu = (f", peak GPU {r['peak_gpu_allocated_gib']:.2f} GiB allocated / {r['peak_gpu_reserved_gib']:.2f} GiB reserved"
           if "peak_gpu_allocated_gib" in r else "")
    grid = "x".join(map(str, r["model_crop_shape"]))
    roi = "x".join(map(str, r["roi"]))
    return (f"{r['config']:>6} ({r['checkpoint']}, {r['device']}, {r['amp']}): model grid {grid} "
            f"at {r['model_spacing_mm'][0]:g} mm, {r['windows']} windows of {roi}\n"
            f"        preprocess {t.get('preprocess_s', 0):.2f} s, inference {t.get('inference_s', 0):.2f} s, "
            f"postprocess {t.get('postprocess_s', 0):.2f} s; whole call {r['wall_s']:.2f} s; "
            f"peak RSS {r['peak_rss_mib']} MiB{gpu}")


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("I", "J", "K"))
    ap.add_argument("--configs", default=None,
                    help="comma-separated: paper, small (default: paper,small with CUDA, small without)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, help="folder for the volume and random checkpoints (reused)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one configuration, JSON out
    ap.add_argument("--volume", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dsm-bench-segment-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.case:
        print(json.dumps(run_case(args.case, args.volume, args.device, work)))
        return 0
    cuda = torch.cuda.is_available() and args.device != "cpu"
    configs = (args.configs or ("paper,small" if cuda else "small")).split(",")
    unknown = sorted(set(configs) - {"paper", "small"})
    if unknown:
        ap.error(f"unknown configurations {unknown} (paper, small)")
    path = volume(work, tuple(args.shape), args.seed)
    print(f"== {'x'.join(map(str, args.shape))} CT ({PIXEL_MM} mm pixels, {SLICE_MM} mm slices), "
          f"device {'cuda' if cuda else 'cpu'}, torch {torch.__version__}", flush=True)
    results = {}
    for config in configs:
        results[config] = r = run_child(config, path, args.device, work)
        print(describe(r), flush=True)
    if "paper" in results and "small" in results:
        p, s = results["paper"], results["small"]
        ratio = p["timings_s"]["inference_s"] / s["timings_s"]["inference_s"]
        print(f"paper / small (same volume, same run): inference x{ratio:.1f}, whole call x{p['wall_s'] / s['wall_s']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
