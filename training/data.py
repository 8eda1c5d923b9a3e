"""Cached datasets and a reproducible sample order.

Order and augmentation are pure functions of (seed, epoch, position): each epoch's order is a
permutation drawn from a generator seeded with (seed, epoch), and every sample's random
transforms are re-seeded from (seed, epoch, position) before they run. A resumed run therefore
sees exactly the samples and augmentations of an uninterrupted one, with any number of loader
workers and on any rank.
"""
from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset, list_data_collate
from monai.transforms import Compose
from torch.utils.data import DataLoader

from .datalist import Case


def case_items(cases: Sequence[Case]) -> list[dict[str, Any]]:
    return [{"image": str(c.image), "label": str(c.label) if str(c.label) not in ("", ".") else None,
             "dataset": c.dataset, "case": c.case_id} for c in cases]


def cached_dataset(items: list[dict], transform: Compose, cache: str, cache_dir: str | Path | None = None,
                   num_workers: int = 0) -> Dataset:
    """cache: 'memory' (CacheDataset), 'disk' (PersistentDataset under cache_dir) or 'none'."""
    if cache == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=num_workers or None, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache 'disk' needs cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(items, transform)
    raise ValueError(f"cache must be memory, disk or none, got {cache!r}")


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0] & 0x7FFFFFFF)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))
    return torch.randperm(n, generator=g).tolist()


def epoch_plan(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(dataset index, sample seed) for this rank in this epoch. Every rank gets the same number
    of samples (the permutation wraps around), as DistributedSampler does."""
    order = epoch_order(n, seed, epoch)
    per_rank = -(-n // world)
    order = (order * (-(-per_rank * world // n)))[: per_rank * world]
    mine = order[rank::world]
    return [(idx, sample_seed(seed, epoch, rank + pos * world)) for pos, idx in enumerate(mine)]


class PlannedSamples(torch.utils.data.Dataset):
    """Items of a plan: the cached sample, augmented with its own seed."""

    def __init__(self, base: Dataset, augment: Compose, plan: list[tuple[int, int]]) -> None:
        self.base, self.augment, self.plan = base, augment, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        idx, seed = self.plan[i]
        sample = self.base[idx]
        if not isinstance(self.base, CacheDataset):
            sample = deepcopy(sample)
        self.augment.set_random_state(seed=seed)
        return self.augment(sample)


def planned_loader(base: Dataset, augment: Compose, plan: list[tuple[int, int]], batch_size: int,
                   num_workers: int = 0) -> DataLoader:
    return DataLoader(PlannedSamples(base, augment, plan), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=list_data_collate, drop_last=False,
                      persistent_workers=False)


def tumor_types(spec: str) -> list[str]:
    """'all' | 'seen' | 'unseen' | 'none' | comma-separated keys of phantoms.TUMOR_TYPES."""
    from .phantoms import SEEN_TUMORS, TUMOR_TYPES, UNSEEN_TUMORS

    named = {"all": list(TUMOR_TYPES), "seen": list(SEEN_TUMORS), "unseen": list(UNSEEN_TUMORS), "none": []}
    if spec in named:
        return named[spec]
    types = [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in types if t not in TUMOR_TYPES]
    if bad:
        raise ValueError(f"unknown tumour type(s) {bad}; use all, seen, unseen, none or some of {sorted(TUMOR_TYPES)}")
    return types


def phantom_items(seed: int, n: int, tumors: str = "all", spacing: float = 3.0,
                  dataset: str = "phantom_all") -> list[dict[str, Any]]:
    """n in-memory phantoms with seeds seed .. seed+n-1 (arrays, no files)."""
    from .phantoms import generate

    types = tumor_types(tumors)
    items = []
    for s in range(seed, seed + n):
        ph = generate(s, spacing=spacing, tumor_types=types)
        items.append({"image": ph.image, "label": ph.label, "affine": ph.affine, "dataset": dataset,
                      "case": f"phantom_{s:05d}", "sex": ph.info["sex"]})
    return items


# The registry dataset of a phantom set, by the tumour types it carries.
PHANTOM_DATASETS = {"seen": "phantom_seen", "all": "phantom_all", "none": "phantom_organs"}


def spec_items(data: str, root: str | Path | None, spacing: float, *, tumours: str, real: bool,
               dataset: str | None = None) -> list[dict[str, Any]]:
    """The cases a command line names: ``real`` (the real evaluation CTs, refused unless ``real``),
    ``phantom:SEED:N[:TUMOURS[:SPACING]]`` (TUMOURS defaults to ``tumours``, SPACING to
    ``spacing``; the phantoms belong to ``dataset``, by default the registry dataset of their
    tumour types: all, seen or none) or a dataset list CSV (image paths relative to ``root``)."""
    from .datalist import read_datalist
    from .real_data import real_items

    if data == "real":
        if not real:
            raise ValueError("the real CTs are for evaluation only: calibrate on validation cases "
                             "(phantom:SEED:N or a dataset list)")
        return real_items(Path(root) if root else None)
    spec = parse_phantom_spec(data)
    if spec is None:
        return case_items(read_datalist(data, root))
    kinds = spec.setdefault("tumors", tumours)
    if dataset is None:
        if kinds not in PHANTOM_DATASETS:
            raise ValueError(f"phantom tumour types: one of {sorted(PHANTOM_DATASETS)}, got {kinds!r}")
        dataset = PHANTOM_DATASETS[kinds]
    spec.setdefault("spacing", spacing)
    return phantom_items(dataset=dataset, **spec)


def parse_phantom_spec(text: str) -> dict[str, Any] | None:
    """'phantom:SEED:N[:TUMOURS[:SPACING]]' -> phantom_items kwargs, or None for other strings."""
    if not text.startswith("phantom:"):
        return None
    parts = text.split(":")[1:]
    if len(parts) < 2:
        raise ValueError(f"phantom data spec must be phantom:SEED:N[:TUMOURS[:SPACING]], got {text!r}")
    out: dict[str, Any] = {"seed": int(parts[0]), "n": int(parts[1])}
    if len(parts) > 2 and parts[2]:
        out["tumors"] = parts[2]
    if len(parts) > 3 and parts[3]:
        out["spacing"] = float(parts[3])
    return out
