"""Benchmark of the DSM model: CPU forward of the small config, the pure-PyTorch selective scan
against a sequential recurrence, and (when CUDA is present) the paper config on the GPU with and
without the mamba_ssm kernels.

    .venv/bin/python bench/model.py [--repeats 3] [--threads 2] [--json out.json]

CPU part takes about a minute on 2 idle cores. Peak memory on CPU is the rise of the process RSS
above its level before the call (sampled every 2 ms); on GPU it is torch's peak allocation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.catalog import load_catalog  # noqa: E402
from model.config import load_model_config  # noqa: E402
from model.mamba import mamba_ssm_available, selective_scan  # noqa: E402
from model.network import DSMNet  # noqa: E402
from model.text import class_embeddings  # noqa: E402


class PeakRSS:
    """Peak resident-memory rise (MiB) of this process while the block runs."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.peak_mib = 0.0

    def __enter__(self) -> PeakRSS:
        self.base = self.proc.memory_info().rss
        self.top = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.top = max(self.top, self.proc.memory_info().rss)
        self.peak_mib = (self.top - self.base) / 2**20


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds over ``repeats`` calls after a warm-up.

    The CPU time is reported too because the shared development machines are often
    oversubscribed: wall time then measures the neighbours, CPU time still measures the code.
    """
    fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def sequential_scan(u, delta, A, B, C, D, z, delta_bias):
    """Reference: the selective-scan recurrence one token at a time."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + u * D[:, None]) * F.silu(z)


def scan_inputs(d_inner: int, d_state: int, length: int, device="cpu"):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return dict(
        u=r(1, d_inner, length), delta=r(1, d_inner, length), A=-torch.rand(d_inner, d_state, generator=g).to(device) * 16,
        B=r(1, d_state, length), C=r(1, d_state, length), D=r(d_inner), z=r(1, d_inner, length), delta_bias=r(d_inner),
    )


def case_small_forward(repeats: int) -> dict:
    table = class_embeddings(load_catalog())
    cfg = load_model_config("small").replace(**{"ssm.backend": "torch"})
    torch.manual_seed(0)
    model = DSMNet(cfg).eval()
    model.set_text_embeddings(table)
    x = torch.rand(1, 1, *cfg.preprocessing.roi_size)
    with torch.no_grad(), PeakRSS() as mem:
        wall, cpu = timed(lambda: model(x), repeats)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": mem.peak_mib,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "roi": list(cfg.preprocessing.roi_size)}


def case_scan(repeats: int, d_model: int) -> dict:
    d_inner, d_state, length = 2 * d_model, 16, 24**3
    inp = scan_inputs(d_inner, d_state, length)
    with torch.no_grad(), PeakRSS() as mem:
        wall, cpu = timed(lambda: selective_scan(**inp, delta_softplus=True), repeats)
    with torch.no_grad():
        t, c = time.perf_counter(), time.process_time()
        ref = sequential_scan(**inp)
        seq_wall, seq_cpu = time.perf_counter() - t, time.process_time() - c
        err = (selective_scan(**inp, delta_softplus=True) - ref).abs().max().item()
    grad_inp = {k: v.clone().requires_grad_() for k, v in inp.items()}
    with PeakRSS() as mem_fb:
        fb_wall, fb_cpu = timed(lambda: selective_scan(**grad_inp, delta_softplus=True).square().sum().backward(), repeats)
    return {"d_model": d_model, "d_inner": d_inner, "d_state": d_state, "L": length, "wall_s": wall, "cpu_s": cpu,
            "peak_rss_mib": mem.peak_mib, "sequential_wall_s": seq_wall, "sequential_cpu_s": seq_cpu,
            "max_abs_diff": err, "fwd_bwd_wall_s": fb_wall, "fwd_bwd_cpu_s": fb_cpu, "fwd_bwd_peak_rss_mib": mem_fb.peak_mib}


CASES = {"small_forward": case_small_forward, "scan25": lambda r: case_scan(r, 25), "scan45": lambda r: case_scan(r, 45)}


def run_case_in_child(name: str, args) -> dict:
    """Each case runs in a fresh process so that its peak RSS is not hidden by an earlier case's heap."""
    cmd = [sys.executable, __file__, "--case", name, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cpu(args, results: dict) -> None:
    print(f"== CPU: {platform.machine()}, torch threads {args.threads}, {psutil.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (wall times inflate with load; CPU times do not)")
    r = results["cpu_small_forward"] = run_case_in_child("small_forward", args)
    print(f"small config ({r['params_m']:.1f} M params), one {tuple(r['roi'])} ROI, forward, no_grad: "
          f"wall {r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s (medians of {args.repeats}), peak RSS +{r['peak_rss_mib']:.0f} MiB")
    for name, label in (("scan25", "organ SSM (d_model 25)"), ("scan45", "d_model 45")):
        r = results[f"cpu_{name}"] = run_case_in_child(name, args)
        print(f"selective scan, {label}: batch 1, L {r['L']}, d_inner {r['d_inner']}, d_state {r['d_state']}, float32")
        print(f"    chunked forward  wall {r['wall_s'] * 1e3:7.0f} ms  CPU {r['cpu_s'] * 1e3:7.0f} ms  "
              f"peak RSS +{r['peak_rss_mib']:.0f} MiB")
        print(f"    sequential       wall {r['sequential_wall_s'] * 1e3:7.0f} ms  CPU {r['sequential_cpu_s'] * 1e3:7.0f} ms  "
              f"-> speed-up x{r['sequential_wall_s'] / r['wall_s']:.1f} (wall), x{r['sequential_cpu_s'] / r['cpu_s']:.1f} (CPU); "
              f"max |diff| {r['max_abs_diff']:.1e}")
        print(f"    chunked fwd+bwd  wall {r['fwd_bwd_wall_s'] * 1e3:7.0f} ms  CPU {r['fwd_bwd_cpu_s'] * 1e3:7.0f} ms  "
              f"peak RSS +{r['fwd_bwd_peak_rss_mib']:.0f} MiB")


def bench_gpu(repeats: int, results: dict) -> None:
    name = torch.cuda.get_device_name()
    print(f"== GPU: {name}")
    results["gpu"] = name
    sync = torch.cuda.synchronize
    ok, why = mamba_ssm_available()
    backends = ["torch"] + (["mamba_ssm"] if ok else [])
    if not ok:
        print(f"mamba_ssm kernels unavailable ({why}); timing the torch scan only")
    table = class_embeddings(load_catalog()).cuda()
    cfg = load_model_config("paper")
    torch.manual_seed(0)
    model = DSMNet(cfg).cuda().eval()
    model.set_text_embeddings(table)
    x = torch.rand(1, 1, *cfg.preprocessing.roi_size, device="cuda")
    for backend in backends:
        for module in model.modules():
            if hasattr(module, "resolve_backend"):
                module.backend = backend
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            med, _ = timed(lambda: model(x), repeats, sync)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"paper config, one 96^3 ROI, forward, bf16 autocast, Mamba backend {backend}: "
              f"median {med * 1e3:.0f} ms, peak {peak:.2f} GiB")
        results[f"gpu_paper_forward_{backend}_s"] = med
        x_train = x.expand(2, -1, -1, -1, -1).contiguous()
        model.train()
        torch.cuda.reset_peak_memory_stats()

        # The batch is bound as a default: `timed` calls step within this iteration only, but a
        # closure over the loop variable would read whatever x_train is when it runs.
        def step(batch: torch.Tensor = x_train) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(batch)
                loss = out["mask_logits"].float().sigmoid().mean() + sum(r.float().mean() for r in out["layer_logits"])
            loss.backward()

        med, _ = timed(step, repeats, sync)
        model.zero_grad(set_to_none=True)
        model.eval()
        print(f"paper config, batch 2, forward+backward, bf16 autocast, backend {backend}: median {med * 1e3:.0f} ms, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        results[f"gpu_paper_train_step_{backend}_s"] = med
    inp = scan_inputs(50, 16, 24**3, "cuda")
    med, _ = timed(lambda: selective_scan(**inp, delta_softplus=True), repeats, sync)
    print(f"torch selective scan on GPU, L 13824, d_inner 50: {med * 1e3:.1f} ms")
    if ok:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        fused, _ = timed(lambda: selective_scan_fn(**inp, delta_softplus=True), repeats, sync)
        diff = (selective_scan_fn(**inp, delta_softplus=True) - selective_scan(**inp, delta_softplus=True)).abs().max()
        print(f"mamba_ssm selective_scan_fn, same sizes: {fused * 1e3:.2f} ms, max |diff| vs torch scan {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the dev machines have 2 cores)")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # internal: one CPU case, JSON out
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(CASES[args.case](args.repeats)))
        return
    results: dict = {"torch": str(torch.__version__)}
    if not args.skip_cpu:
        bench_cpu(args, results)
    if torch.cuda.is_available():
        bench_gpu(args.repeats, results)
    else:
        print("== GPU: none (CUDA not available); GPU section skipped")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
