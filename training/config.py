"""Training configuration (config/train_*.yaml)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import ModelConfig, load_model_config

from .exposure import ExposureConfig
from .losses import LossWeights
from .transforms import AugmentConfig, CropConfig, PipelineConfig

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PhantomSource:
    """Generate phantoms in memory instead of reading a list (demo and tests)."""

    seed: int = 0
    n: int = 8
    tumors: str = "seen"  # all | seen | unseen | none | comma-separated tumour types
    spacing: float = 3.0
    dataset: str = "phantom_organs"  # registry template the cases are labelled with


@dataclass(frozen=True)
class DataSource:
    list: str | None = None  # dataset list CSV (image,label,dataset[,split])
    root: str | None = None
    phantoms: PhantomSource | None = None


@dataclass(frozen=True)
class DataConfig:
    train: DataSource = field(default_factory=DataSource)
    val: DataSource | None = None  # default: rows with split=val in the training list
    cache: str = "memory"  # memory | disk | none
    cache_dir: str | None = None
    num_workers: int = 0
    val_max_cases: int = 4
    registry: str | None = None  # default config/datasets.yaml


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 2  # per process
    grad_accum: int = 1
    max_steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = 1.0
    amp: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; off on CPU) | off | bf16 | fp16
    # Parameter-name prefixes held fixed (not in the optimizer), e.g. [backbone, pixel_proj,
    # organ_queries, kmmm] for a Stage-2 warm-up of the fresh tumour modules on features that
    # already separate lesions from tissue; a frozen backbone also runs without autograd.
    freeze: tuple[str, ...] = ()
    # Parameter-name prefix -> factor on lr for those parameters (the longest matching prefix
    # wins; the rest train at lr), e.g. {backbone: 0.1}: in Stage 2 the backbone learns the
    # contrast between a lesion and its organ's tissue without unlearning Stage 1's organs.
    lr_mult: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    ckpt_every: int = 100
    val_every: int = 100
    log_every: int = 10
    version: str = "dsm-train"
    threads: int | None = None  # torch CPU threads
    find_unused_parameters: bool = False  # DDP


@dataclass(frozen=True)
class TrainConfig:
    stage: int = 1
    model: str = "small"  # model config name or YAML path
    model_overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys, e.g. backbone.feature_size
    init: str | None = None  # Stage 2: Stage-1 checkpoint (CLI --init wins)
    # Parameter-name prefixes of the init's weights that are not loaded (those modules start
    # fresh), e.g. a Stage-2 file's tumour side, to train Stage 2 again from its organ side.
    init_exclude: tuple[str, ...] = ()
    # Re-draw the learned query embeddings N(0, std^2) before training (null: keep the model's
    # init). Queries loaded from --init keep their trained values. See docs/training.md.
    init_query_std: float | None = None
    # Stage 2 from Stage-1 weights: fit the fresh class projection so that p(c | q) starts as the
    # identity (training/align.py) on the queries of this many training batches, for this many
    # Adam steps; 0 turns it off.
    align_class_steps: int = 200
    align_class_batches: int = 4
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)  # anomaly exposure (exposure.py)
    run: RunConfig = field(default_factory=RunConfig)

    def model_config(self) -> ModelConfig:
        cfg = load_model_config(self.model)
        if self.model_overrides:
            cfg = cfg.replace(**self.model_overrides)
        return cfg.with_stage(self.stage)

    def pipeline(self, model_cfg: ModelConfig) -> PipelineConfig:
        p = model_cfg.preprocessing
        exposure = self.exposure
        if exposure.enabled is None:
            exposure = dataclasses.replace(exposure, enabled=self.stage == 2)
        return PipelineConfig(spacing=tuple(p.spacing), roi=tuple(p.roi_size), hu_window=tuple(p.hu_window),
                              orientation=p.orientation, augment=self.augment, crop=self.crop,
                              crop_margin=p.crop_margin, exposure=exposure, exposure_seed=self.run.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        cfg = _build(TrainConfig, data, "")
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(f"{path}: {exc}") from None
    if cfg.stage not in (1, 2):
        raise TrainConfigError(f"{path}: stage must be 1 or 2")
    o = cfg.optim
    if (o.max_steps is None) == (o.epochs is None):
        raise TrainConfigError(f"{path}: give exactly one of optim.max_steps or optim.epochs")
    return cfg


def _build(cls: type, data: Any, prefix: str):
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TrainConfigError(f"{prefix or 'config'}: expected a mapping")
    data = _renamed_keys(cls, data, prefix)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise TrainConfigError(f"unknown key(s) {[prefix + k for k in unknown]}")
    kwargs = {}
    hints = _nested_types(cls)
    for name, value in data.items():
        sub = hints.get(name)
        if sub is not None and value is not None:
            kwargs[name] = _build(sub, value, f"{prefix}{name}.")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# Keys spelt the British way before the identifiers took the catalog's "tumor": still read
# (configs and training states written earlier), with a warning; to_dict writes the new names.
RENAMED_KEYS: dict[type, dict[str, str]] = {
    PhantomSource: {"tumours": "tumors"},
    CropConfig: {"tumour_prob": "tumor_prob"},
}


def _renamed_keys(cls: type, data: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    renamed = RENAMED_KEYS.get(cls, {})
    if not renamed.keys() & data.keys():
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise TrainConfigError(f"{prefix}{old} and {prefix}{new} are the same key (old and new spelling); keep {new}")
        log.warning("config key %s%s is deprecated, use %s%s", prefix, old, prefix, new)
        out[new] = out.pop(old)
    return out


def _nested_types(cls: type) -> dict[str, type]:
    nested = {
        TrainConfig: {"data": DataConfig, "augment": AugmentConfig, "crop": CropConfig, "optim": OptimConfig,
                      "loss": LossWeights, "exposure": ExposureConfig, "run": RunConfig},
        DataConfig: {"train": DataSource, "val": DataSource},
        DataSource: {"phantoms": PhantomSource},
    }
    return nested.get(cls, {})
