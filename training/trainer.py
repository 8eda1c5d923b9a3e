"""Stage-1 / Stage-2 training loop with exact resume, DDP, AMP and gradient accumulation.

Training state lives in ``<out_dir>/checkpoints/step_XXXXXXX.pt`` (+ ``last.pt``): model,
optimizer, scheduler, grad scaler, RNG states, step, epoch and position in the epoch. Because
the sample order and every augmentation are functions of (seed, epoch, position) (data.py),
resuming from one of these files continues exactly as the uninterrupted run would have.
The released weights (``<out_dir>/final.pt``) use the model's checkpoint format.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model.catalog import load_catalog
from model.checkpoint import load_checkpoint, save_checkpoint
from model.network import DSMNet, build_model
from model.text import class_embeddings

from .config import DataSource, TrainConfig
from .data import cached_dataset, case_items, epoch_plan, phantom_items, planned_loader
from .datalist import read_datalist
from .losses import dsm_loss, tumor_parent_values
from .registry import load_registry
from .transforms import augment_transforms, preprocess_transforms
from .validation import validate

STATE_FORMAT = "dsm-train-state/1"


def _named(name: str, prefix: str) -> bool:
    """A parameter-name prefix names the parameter itself or a module holding it (``backbone``
    names ``backbone.x.weight``, not ``backbone_norm.weight``): optim.freeze, optim.lr_mult,
    init_exclude."""
    return name == prefix or name.startswith(prefix + ".")


LOG_FIELDS = ["step", "epoch", "lr", "loss", "dice", "bce", "tumor_dice", "tumor_bce", "cls", "reject", "deep", "val_dice",
              "val_rejection", "seconds"]
HEALTH_FIELDS = ["step", "class", "crops", "max_prob_mean", "max_prob_min", "target_prob_mean", "dead"]


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def lr_lambda(total: int, warmup: int, min_ratio: float):
    """Linear warm-up from ~0 to 1, then cosine to min_ratio at `total` optimizer steps."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def rng_state() -> dict[str, Any]:
    # numpy's state as a tensor and plain numbers: the state file stays loadable with
    # torch.load(weights_only=True), which refuses numpy arrays (and any other pickled object).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class UntrustedCheckpoint(ValueError):
    """A checkpoint that holds more than tensors and plain data: not loaded without opt-in."""


def load_payload(path: str | Path, trust_legacy: bool = False) -> Any:
    """``torch.load(weights_only=True)``: no code in the file runs. Files written by dsm-train
    before states were weights-only compatible (numpy RNG state) load only with
    ``trust_legacy`` (``--trust-legacy-checkpoint``), for files the user wrote themselves."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_legacy:
            raise UntrustedCheckpoint(
                f"{path} holds objects other than tensors and plain data, so it was not loaded (unpickling can run "
                "code). If it is a training state you wrote yourself with an earlier dsm-train, pass "
                "--trust-legacy-checkpoint") from None
        return torch.load(path, map_location="cpu", weights_only=False)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: TrainConfig, init: str | Path | None = None, resume: str | Path | bool = True,
                 stop_after: int | None = None, device: str | None = None, progress: bool = True,
                 time_budget_s: float | None = None, trust_legacy: bool = False) -> None:
        self.cfg = cfg
        self.trust_legacy = trust_legacy
        self.time_budget_s = time_budget_s
        self.t_created = time.time()
        self.rank, self.world, self.local_rank = _dist_env()
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.init = init if init is not None else cfg.init
        # What the init's training sets labelled (set() without an init; None: the init does not
        # record it, so neither will this run): the checkpoint's ``training.labelled``.
        self._inherited_labelled: set[str] | None = set()
        self.resume = resume
        self.stop_after = stop_after
        self.progress = progress and self.rank == 0
        self.is_main = self.rank == 0

    # ---------------------------------------------------------------- setup
    def _log(self, msg: str) -> None:
        if self.is_main:
            print(f"[dsm-train] {msg}", file=sys.stderr, flush=True)

    def _items(self, src: DataSource, registry, split: str | None) -> list[dict]:
        if src.phantoms is not None:
            p = src.phantoms
            if p.dataset not in registry:
                raise KeyError(f"phantom dataset template {p.dataset!r} is not in the registry")
            return phantom_items(p.seed, p.n, p.tumors, p.spacing, p.dataset)
        if not src.list:
            raise ValueError("a data source needs 'list' or 'phantoms'")
        cases = read_datalist(src.list, src.root)
        if split is not None:
            cases = [c for c in cases if c.split == split]
        for c in cases:
            registry[c.dataset]  # unknown keys fail before any loading
        return case_items(cases)

    def build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.catalog = load_catalog()
        self.is_tumor = torch.tensor([e.is_tumor for e in self.catalog], dtype=torch.bool)
        self.tumor_parents = tumor_parent_values(self.catalog)  # for loss.tumor_envelope_voxels
        self.registry = load_registry(cfg.data.registry, self.catalog)
        self.model_cfg = cfg.model_config()
        self.pipe = cfg.pipeline(self.model_cfg)
        net = build_model(self.model_cfg)
        if cfg.init_query_std:
            # The model draws queries at std 0.02; after the decoder's residual + LayerNorm
            # steps the initial masks of different queries are strongly correlated (mean 0.72
            # on the demo model, 0.24 at std 1). See docs/training.md.
            g = torch.Generator().manual_seed(cfg.run.seed)
            with torch.no_grad():
                for name in ("organ_queries", "tumor_queries"):
                    param = getattr(net, name, None)
                    if param is not None:
                        param.copy_(torch.randn(param.shape, generator=g) * cfg.init_query_std)
        self.embeddings = class_embeddings(self.catalog)
        if self.model_cfg.stage == 2:
            net.set_text_embeddings(self.embeddings)
        if self.init:
            self._load_init(net, self.init)
        self.net: DSMNet = net.to(self.device)
        self.model = self.net
        if self.world > 1:
            self.model = DDP(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=cfg.run.find_unused_parameters)

        train_items = self._items(cfg.data.train, self.registry, "train" if cfg.data.train.list else None)
        if cfg.data.val is not None:
            val_items = self._items(cfg.data.val, self.registry, None)
        elif cfg.data.train.list:
            val_items = self._items(cfg.data.train, self.registry, "val")
        else:
            val_items = []
        if not train_items:
            raise ValueError("no training cases")
        val_items = val_items[: cfg.data.val_max_cases]
        self._log(f"{len(train_items)} training / {len(val_items)} validation cases; caching ({cfg.data.cache})")
        cache_dir = cfg.data.cache_dir or str(self.out / "cache")
        self.train_ds = cached_dataset(train_items, preprocess_transforms(self.registry, self.pipe, True),
                                       cfg.data.cache, cache_dir, cfg.data.num_workers)
        self.val_ds = cached_dataset(val_items, preprocess_transforms(self.registry, self.pipe, False),
                                     cfg.data.cache, cache_dir, cfg.data.num_workers) if val_items else None
        self.val_items = val_items
        self._val_cases = None  # source-grid cases for calibration and the rejection check (lazy)
        self._health: dict[int, list[float]] = {}
        self.augment = augment_transforms(self.pipe)

        o = cfg.optim
        per_epoch_mb = math.ceil(math.ceil(len(train_items) / self.world) / o.batch_size)
        self.steps_per_epoch = per_epoch_mb / o.grad_accum
        self.total_steps = o.max_steps if o.max_steps is not None else max(1, math.ceil(o.epochs * self.steps_per_epoch))
        if o.warmup_steps is not None:
            warm = o.warmup_steps
        elif o.warmup_epochs is not None:
            warm = int(round(o.warmup_epochs * self.steps_per_epoch))
        else:
            warm = 0
        self.warmup = warm
        trainable = self._trainable(o.freeze)
        self.optimizer = torch.optim.AdamW(self._param_groups(trainable, o.lr, o.lr_mult), lr=o.lr,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps, warm, o.min_lr_ratio))
        self.amp_dtype = _amp_dtype(o.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.mb_in_epoch = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self._log(f"stage {self.model_cfg.stage}, {sum(p.numel() for p in self.net.parameters()) / 1e6:.2f} M parameters, "
                  f"{self.total_steps} steps ({self.steps_per_epoch:.2f} per epoch), warm-up {warm}, device {self.device}"
                  + (f", AMP {self.amp_dtype}" if self.amp_dtype else "") + (f", world {self.world}" if self.world > 1 else ""))

    def _trainable(self, freeze: tuple[str, ...]) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates; those named by a ``freeze`` prefix are fixed."""
        prefixes = tuple(str(f).rstrip(".") for f in freeze)
        names = dict(self.net.named_parameters())
        unknown = [f for f in prefixes if not any(_named(n, f) for n in names)]
        if unknown:
            raise ValueError(f"optim.freeze: no parameter is named {unknown}; top-level modules: "
                             f"{sorted({n.split('.')[0] for n in names})}")
        keep = []
        for name, param in names.items():
            frozen = any(_named(name, f) for f in prefixes)
            param.requires_grad_(not frozen)
            if not frozen:
                keep.append(param)
        if prefixes:
            fixed = sum(p.numel() for p in names.values() if not p.requires_grad)
            self._log(f"frozen: {', '.join(prefixes)} ({fixed / 1e6:.2f} M parameters); "
                      f"training {sum(p.numel() for p in keep) / 1e6:.2f} M")
        if not keep:
            raise ValueError("optim.freeze leaves no parameter to train")
        return keep

    def _param_groups(self, trainable: list[torch.nn.Parameter], lr: float,
                      lr_mult: Mapping[str, float]) -> list[dict[str, Any]]:
        """One optimizer group per learning rate: a parameter takes the factor of the longest
        ``lr_mult`` prefix its name matches (1 without one). The schedule scales every group alike."""
        mult = {str(k).rstrip("."): float(v) for k, v in (lr_mult or {}).items()}
        names = {id(p): n for n, p in self.net.named_parameters()}
        unknown = [k for k in mult if not any(_named(n, k) for n in names.values())]
        if unknown:
            raise ValueError(f"optim.lr_mult: no parameter is named {unknown}")
        if any(v < 0 for v in mult.values()):
            raise ValueError("optim.lr_mult: factors must be >= 0")
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for param in trainable:
            name = names[id(param)]
            hits = [k for k in mult if _named(name, k)]
            groups.setdefault(mult[max(hits, key=len)] if hits else 1.0, []).append(param)
        if len(groups) > 1:
            self._log("learning rates: " + ", ".join(f"{lr * f:g} ({sum(p.numel() for p in ps) / 1e6:.2f} M)"
                                                      for f, ps in sorted(groups.items())))
        return [{"params": ps, "lr": lr * f} for f, ps in sorted(groups.items())]

    def _load_init(self, net: DSMNet, path: str | Path) -> None:
        """Stage-1 weights into this model, non-strictly (new Stage-2 modules start fresh)."""
        path = Path(path)
        payload = load_payload(path, self.trust_legacy)
        if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
            state = payload["model"]
            labelled = payload.get("labelled")
        else:
            ckpt = load_checkpoint(path)
            state, labelled = ckpt.state_dict, ckpt.labelled
        self._inherited_labelled = None if labelled is None else set(labelled)
        exclude = tuple(str(p).rstrip(".") for p in self.cfg.init_exclude)
        if exclude:
            unknown = [p for p in exclude if not any(_named(k, p) for k in state)]
            if unknown:
                raise ValueError(f"init_exclude: {path} has no weights named {unknown}")
            state = {k: v for k, v in state.items() if not any(_named(k, p) for p in exclude)}
        report = net.load_stage1(state)
        self._log(f"initialised from {path}{f' without {list(exclude)}' if exclude else ''}: {report}")

    def _align_class_projection(self) -> None:
        """Stage 2 from Stage-1 weights: p(c | q) starts as the identity (training/align.py), fitted
        on the queries of a few training crops, before the first step."""
        steps = self.cfg.align_class_steps
        if self.model_cfg.stage != 2 or not self.init or not steps:
            return
        from .align import align_class_projection

        o = self.cfg.optim
        # Any training crops serve; the seed offset only picks a shuffle other than epoch 0's.
        plan = epoch_plan(len(self.train_ds), self.cfg.run.seed + 7919, 0, self.rank, self.world)
        n_batches = max(1, self.cfg.align_class_batches)
        loader = planned_loader(self.train_ds, self.augment, plan[: n_batches * o.batch_size], o.batch_size, 0)
        images = (b["image"].to(self.device).float() for b in loader)
        report = align_class_projection(self.net, images, steps=steps)
        self._log(str(report))

    # ---------------------------------------------------------------- checkpoints
    def state_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:07d}.pt"

    def save_state(self) -> Path | None:
        if not self.is_main:
            return None
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": STATE_FORMAT,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "step": self.step, "epoch": self.epoch, "mb_in_epoch": self.mb_in_epoch,
            "total_steps": self.total_steps,
            "config": self.cfg.to_dict(), "model_config": self.model_cfg.to_dict(),
            "labelled": self._labelled(),
            "history": [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in self.history],
        }
        path = self.state_path(self.step)
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        last = self.ckpt_dir / "last.pt"
        tmp = last.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, last)
        return path

    def load_state(self, path: Path) -> None:
        payload = load_payload(path, self.trust_legacy)
        if payload.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a training state file")
        if payload["model_config"] != self.model_cfg.to_dict():
            raise ValueError(f"{path} was written with another model config")
        self.net.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        self.step, self.epoch, self.mb_in_epoch = payload["step"], payload["epoch"], payload["mb_in_epoch"]
        if payload.get("total_steps", self.total_steps) != self.total_steps:
            # A run shortened by --time-budget keeps its schedule when resumed.
            self._set_total_steps(int(payload["total_steps"]))
        self.history = list(payload.get("history", []))
        # a state from before the key: what its init labelled is unknown
        self._inherited_labelled = None if payload.get("labelled") is None else set(payload["labelled"])
        self._log(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.mb_in_epoch})")

    def _set_total_steps(self, total: int) -> None:
        """Shorten (or restore) the run: the cosine schedule is re-planned to end at `total`."""
        self.total_steps = total
        f = lr_lambda(total, self.warmup, self.cfg.optim.min_lr_ratio)
        self.scheduler.lr_lambdas = [f] * len(self.optimizer.param_groups)
        # The next step's rate was computed with the old plan: recompute it.
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * f(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _fit_budget(self, steps_done: int, seconds: float) -> None:
        """After a few timed steps, cut total_steps so the run ends within time_budget_s.

        Measured from the Trainer's creation (data generation and caching count); 10 % of the
        remaining time is kept for validation passes and the final checkpoint. Every rank
        takes rank 0's figure, so DDP ranks stop together.
        """
        per_step = seconds / max(steps_done, 1)
        left = self.time_budget_s - (time.time() - self.t_created)
        fit = self.step + max(int(0.9 * left / per_step), 1)
        if self.world > 1:
            t = torch.tensor([fit], device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(t, 0)
            fit = int(t.item())
        if fit < self.total_steps:
            self._log(f"time budget {self.time_budget_s:.0f} s: {per_step:.3f} s/step measured, "
                      f"training {fit} of {self.total_steps} steps")
            self._set_total_steps(fit)

    def _resume_path(self) -> Path | None:
        if self.resume is False or self.resume is None:
            return None
        if self.resume is True:
            last = self.ckpt_dir / "last.pt"
            return last if last.exists() else None
        return Path(self.resume)

    # ---------------------------------------------------------------- loop
    def _forward_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"].to(self.device, non_blocking=True).float()
        label = batch["label"].to(self.device, non_blocking=True)
        ann = batch["annotated"].to(self.device)
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            out = self.model(x)
        stats: dict = {}
        loss, parts = dsm_loss(out, label, ann, len(self.catalog), self.model_cfg.stage, self.cfg.loss,
                               is_tumor=self.is_tumor, stats=stats, progress=self.step / max(self.total_steps, 1),
                               tumor_parents=self.tumor_parents)
        self._track_health(stats)
        return loss, parts

    def _track_health(self, stats: dict) -> None:
        """Per class: crops where it is present, and the highest probability it reached there."""
        present, top = stats["present"].cpu(), stats["max_prob"].cpu()
        inside = stats["target_prob"].cpu()
        for c in torch.nonzero(present.any(0)).flatten().tolist():
            vals = top[:, c][present[:, c]]
            h = self._health.setdefault(c, [0, 0.0, 1.0, 0.0])
            h[0] += len(vals)
            h[1] += float(vals.sum())
            h[2] = min(h[2], float(vals.min()))
            h[3] += float(inside[:, c][present[:, c]].sum())

    def _write_health(self) -> None:
        """channel_health.csv: a class whose probability stayed below 0.5 on every crop that
        contained it since the last row is reported as dead (the kidney-tumour channel of the
        first demo model died like this, unnoticed until evaluation)."""
        if not self.is_main or not self._health:
            self._health = {}
            return
        path = self.out / "channel_health.csv"
        new = not path.exists()
        dead = []
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=HEALTH_FIELDS)
            if new:
                w.writeheader()
            for c, (n, total, low, target) in sorted(self._health.items()):
                mean = total / max(n, 1)
                is_dead = mean < 0.5 and n >= 4
                if is_dead:
                    dead.append(self.catalog[c].name)
                w.writerow({"step": self.step, "class": self.catalog[c].name, "crops": n,
                            "max_prob_mean": round(mean, 4), "max_prob_min": round(low, 4),
                            "target_prob_mean": round(target / max(n, 1), 4), "dead": int(is_dead)})
        if dead:
            self._log(f"step {self.step}: channels below 0.5 on the crops that contain them: {', '.join(dead)}")
        self._health = {}

    def _write_log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if not self.is_main:
            return
        path = self.out / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _rewrite_log(self) -> None:
        """After a resume: the CSV holds exactly the rows up to the resumed step."""
        if not self.is_main:
            return
        path = self.out / "metrics.csv"
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
            w.writeheader()
            for row in self.history:
                w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def run(self) -> dict[str, Any]:
        self.build()
        self.out.mkdir(parents=True, exist_ok=True)
        resume = self._resume_path()
        if resume is not None:
            self.load_state(resume)
            self._rewrite_log()
        else:
            if self.is_main and (self.out / "metrics.csv").exists():
                (self.out / "metrics.csv").unlink()
            self._align_class_projection()
        cfg, o = self.cfg, self.cfg.optim
        n = len(self.train_ds)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"stage {self.model_cfg.stage}",
                       dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        self.net.train()
        accum = 0
        acc_parts: dict[str, float] = {}
        t0 = time.time()
        budget_probe = (self.step + 3, self.step + 13) if self.time_budget_s else None
        t_probe = t0
        stop = self.step >= self.total_steps or (self.stop_after is not None and self.step >= self.stop_after)
        while not stop:
            plan = epoch_plan(n, cfg.run.seed, self.epoch, self.rank, self.world)
            loader = planned_loader(self.train_ds, self.augment, plan[self.mb_in_epoch * o.batch_size:], o.batch_size,
                                    cfg.data.num_workers)
            for batch in loader:
                self.mb_in_epoch += 1
                accum += 1
                sync = accum == o.grad_accum
                ctx = self.model.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    loss, parts = self._forward_loss(batch)
                    self.scaler.scale(loss / o.grad_accum).backward()
                for k, v in parts.items():
                    acc_parts[k] = acc_parts.get(k, 0.0) + v / o.grad_accum
                if not sync:
                    continue
                if o.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), o.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                self.step += 1
                accum = 0
                if budget_probe is not None and self.step == budget_probe[0]:
                    t_probe = time.time()  # the first steps include CUDA/cuDNN warm-up
                elif budget_probe is not None and self.step == budget_probe[1]:
                    self._fit_budget(budget_probe[1] - budget_probe[0], time.time() - t_probe)
                    budget_probe = None
                    if bar is not None:
                        bar.total = self.total_steps
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{acc_parts.get('loss', 0):.3f}")
                row = None
                if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                    self._write_health()
                    row = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3), "lr": lr,
                           **{k: round(v, 6) for k, v in acc_parts.items()}, "seconds": round(time.time() - t0, 1)}
                acc_parts = {}
                if self.val_ds is not None and (self.step % cfg.run.val_every == 0 or self.step == self.total_steps):
                    vd = self.validate()
                    row = row or {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3), "lr": lr,
                                  "seconds": round(time.time() - t0, 1)}
                    row["val_dice"] = round(vd, 6)
                    msg = f"step {self.step}: validation Dice {vd:.4f}"
                    if self.pipe.exposure.enabled:
                        rej = self.rejection()
                        row["val_rejection"] = round(rej["rate"], 4)
                        msg += f", synthetic-lesion rejection {rej['rate']:.3f} of {rej['lesions']} ({rej['per_host']})"
                    self._log(msg)
                if row is not None:
                    self._write_log(row)
                done = self.step >= self.total_steps
                stopping = self.stop_after is not None and self.step >= self.stop_after
                if self.step % cfg.run.ckpt_every == 0 or done or stopping:
                    self.save_state()
                if done or stopping:
                    stop = True
                    break
            else:
                self.epoch += 1
                self.mb_in_epoch = 0
        if bar is not None:
            bar.close()
        summary = {"step": self.step, "total_steps": self.total_steps, "finished": self.step >= self.total_steps}
        if self.is_main and summary["finished"]:
            summary.update(self.finish())
        if self.world > 1:
            dist.barrier()
        return summary

    @torch.no_grad()
    def validate(self) -> float:
        self.net.eval()
        try:
            return validate(self.net, self.val_ds, self.pipe.roi, self.model_cfg.inference.overlap, self.device,
                            len(self.catalog))
        finally:
            self.net.train()

    def _segmenter(self, calibration: dict | None = None):
        from .calibration import segmenter_for

        return segmenter_for(self.net, self.catalog, self.embeddings, self.model_cfg, self._seen_tumors(),
                             self.device, calibration)

    def _cases(self):
        from .calibration import load_cases

        if self._val_cases is None:
            self._val_cases = load_cases(self.val_items, self.registry)
        return self._val_cases

    @torch.no_grad()
    def rejection(self) -> dict[str, Any]:
        """Synthetic-lesion rejection rate on the validation cases with freshly painted lesions."""
        from .calibration import rejection_rate

        self.net.eval()
        try:
            return rejection_rate(self._segmenter(), self._cases(), self.pipe.exposure, seed=self.cfg.run.seed + 7919)
        finally:
            self.net.train()

    @torch.no_grad()
    def calibrate(self) -> dict[str, Any]:
        from .calibration import calibrate

        self.net.eval()
        try:
            return calibrate(self._segmenter(), self._cases()) if self.val_items else {}
        finally:
            self.net.train()

    def _labelled(self) -> list[str] | None:
        """Every class a training set of these weights labelled: this run's datasets and its
        init's (None when the init does not record it). model.segment does not draw an organ
        class outside it."""
        if self._inherited_labelled is None:
            return None
        return sorted(self._inherited_labelled | self.registry.annotated_by(self._dataset_keys()))

    def _seen_tumors(self) -> list[str]:
        if self.model_cfg.stage != 2:
            return []
        return sorted(c for c in self.registry.annotated_by(self._dataset_keys()) if self.catalog.by_name(c).is_tumor)

    # ---------------------------------------------------------------- end of training
    def finish(self) -> dict[str, Any]:
        from .plots import plot_curves

        plot = plot_curves(self.out / "metrics.csv", self.out / "curves.png")
        last_val = next((r["val_dice"] for r in reversed(self.history) if r.get("val_dice") not in (None, "")), None)
        train = {
            "stage": self.model_cfg.stage,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "batch_size": self.cfg.optim.batch_size,
            "world_size": self.world,
            "lr": self.cfg.optim.lr,
            "seed": self.cfg.run.seed,
            "datasets": sorted({str(d) for d in self._dataset_keys()}),
            "seen_tumors": self._seen_tumors(),
            "labelled": self._labelled(),
            "init": str(self.init) if self.init else None,
            "final_val_dice": last_val,
            "final_loss": self.history[-1].get("loss") if self.history else None,
        }
        calibration = self.calibrate()
        if calibration:
            self._log(f"calibrated on {calibration['cases']} validation cases: thresholds {calibration['thresholds']}, "
                      f"zero-shot {calibration.get('zero_shot_threshold', '-')}, by organ "
                      f"{calibration.get('zero_shot_organs', '-')} (null: off; false ml per case "
                      f"{calibration.get('zero_shot_false_ml', '-')})")
        final = save_checkpoint(self.out / "final.pt", self.net, self.catalog, self.embeddings,
                                version=self.cfg.run.version, training=train, calibration=calibration)
        (self.out / "summary.json").write_text(json.dumps({**train, "checkpoint": str(final),
                                                           "curves": str(plot) if plot else None}, indent=2))
        self._log(f"wrote {final}")
        return {"checkpoint": str(final), **train}

    def _dataset_keys(self) -> list[str]:
        src = self.cfg.data.train
        if src.phantoms is not None:
            return [src.phantoms.dataset]
        return [c.dataset for c in read_datalist(src.list, src.root)]


def train(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    return Trainer(cfg, **kwargs).run()
