"""Typed model configuration (``config/model_*.yaml``).

Stage 1 and Stage 2 are the same network class; ``stage`` selects which modules exist.
The YAML files describe the served (Stage 2) model; training derives Stage 1 with
``cfg.with_stage(1)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .resources import package_file

CONFIG_DIR = package_file("model", "configs")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BackboneConfig:
    """MONAI SwinUNETR arguments (monai 1.6.1: no img_size)."""

    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    norm_name: str = "instance"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    use_checkpoint: bool = False
    use_v2: bool = False
    # SDPA for the window attention; MONAI uses it only when autograd is off (inference).
    use_flash_attention: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    query_dim: int = 256  # C
    pixel_dim: int = 128  # D, channels of the L2-normalised pixel embedding E
    n_organ_queries: int = 25
    n_tumor_queries: int = 20
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    # Mask logits M_q = s * cos(MaskKernel(Q_q), E) with a learned scale s clamped to this range:
    # unbounded dot products let absent classes saturate at logits of -40..-60 (the first demo
    # model's kidney-tumour and cyst channels), where no loss term moves them back.
    mask_scale_init: float = 10.0
    mask_scale_range: tuple[float, ...] = (1.0, 30.0)
    # False only for checkpoints made before bounded masks (plain dot product <k, E>); they
    # stay loadable, see model/checkpoint.py.
    bounded_masks: bool = True
    # Stage 2: prior probability of a fresh tumour query's mask voxel (a per-query bias
    # -log((1 - p) / p) added to the tumour mask logits, learned from there). Without it a
    # fresh tumour query covers about half of every crop (random sign of the cosine) and its
    # first steps go to shrinking that: the 0.3 demo's "Kidney Cyst" channel ended on whole
    # kidneys. None: no bias (checkpoints made before it, see model/checkpoint.py).
    tumor_mask_prior: float | None = 0.01
    # Stage 2: the organ queries take the organ-tumour interaction through a learned gate per
    # scale that starts at 0, Q_o <- Q_o + g_l * (Interaction(Q_o, Q_t)_o - Q_o), so that Stage 2
    # starts from exactly Stage 1's organ masks. The interaction blocks are new in Stage 2 and
    # post-norm: ungated they change every organ query from the first step, and the CPU-trained
    # Stage 2 of dsm-small-demo-0.4 never recovered (left kidney DSC 0.94 after Stage 1, 0.26
    # after Stage 2; liver 0.92 -> 0.70). False: checkpoints made before it (model/checkpoint.py).
    interaction_gate: bool = True


@dataclass(frozen=True)
class SSMConfig:
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    backend: str = "auto"  # auto | torch | mamba_ssm
    chunk_size: int = 64  # pure-PyTorch scan: tokens per chunk of the two-level scan


@dataclass(frozen=True)
class DQRConfig:
    steps: int = 1
    lam: float = 1.0  # lambda: temperature of the guidance distance
    guidance_dim: int = 32


@dataclass(frozen=True)
class AMVPConfig:
    """Anomaly Mask Visual Prompt and the organ envelope (spec items 5, 10, 11).

    The envelope of a set of organ voxels is that set closed with a ball of ``close_mm`` and
    hole-filled; the same radius serves the prompt (per query scale), the anomaly output and
    the parent-organ gate of tumours. ``scales`` switches the prompt per query scale, coarse to
    fine (stride 32, 16, 8, 4): cells larger than the smallest lesion of interest hold mostly
    organ tissue, so the prompt is off at the two coarsest by default.
    """

    close_mm: float = 10.0
    scales: tuple[bool, ...] = (False, False, True, True)


@dataclass(frozen=True)
class TextConfig:
    dim: int = 512
    tau: float = 0.01
    clip_model: str = "ViT-B-32"


@dataclass(frozen=True)
class PreprocessingConfig:
    orientation: str = "RAS"
    spacing: tuple[float, ...] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, ...] = (-175.0, 250.0)
    roi_size: tuple[int, ...] = (96, 96, 96)
    crop_margin: int = 2  # voxels kept around the body (HU above the window's lower edge)


ORGAN_OVERLAP_RULES = ("nested", "score")


@dataclass(frozen=True)
class InferenceConfig:
    overlap: float = 0.5
    blend_mode: str = "gaussian"
    sw_batch_size: int = 2
    # Where two organ masks claim a voxel (the organ channels are independent sigmoids, so they
    # may): "nested" gives it to the organ with the smaller mask (gall bladder in the liver's
    # concavity, pancreas among bowel loops, vessels inside the liver), "score" to the higher
    # P_c / threshold (the rule of the 0.x demo weights).
    organ_overlap: str = "nested"

    def __post_init__(self) -> None:
        if self.organ_overlap not in ORGAN_OVERLAP_RULES:
            raise ValueError(f"inference.organ_overlap must be one of {ORGAN_OVERLAP_RULES}, "
                             f"not {self.organ_overlap!r}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "dsm-paper"
    stage: int = 2
    in_channels: int = 1
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ssm: SSMConfig = field(default_factory=SSMConfig)
    dqr: DQRConfig = field(default_factory=DQRConfig)
    amvp: AMVPConfig = field(default_factory=AMVPConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.ssm.backend not in ("auto", "torch", "mamba_ssm"):
            raise ConfigError(f"ssm.backend must be auto, torch or mamba_ssm, got {self.ssm.backend!r}")
        if self.backbone.feature_size % 12:
            raise ConfigError(f"backbone.feature_size must be divisible by 12 (SwinUNETR), got {self.backbone.feature_size}")
        if self.decoder.query_dim % self.decoder.num_heads:
            raise ConfigError("decoder.query_dim must be divisible by decoder.num_heads")
        lo, hi = self.decoder.mask_scale_range
        if not 0 < lo <= self.decoder.mask_scale_init <= hi:
            raise ConfigError(f"decoder.mask_scale_init must lie in mask_scale_range {self.decoder.mask_scale_range}")
        prior = self.decoder.tumor_mask_prior
        if prior is not None and not 0.0 < prior < 1.0:
            raise ConfigError(f"decoder.tumor_mask_prior must lie in (0, 1) or be null, got {prior!r}")
        if len(self.amvp.scales) != 4:
            raise ConfigError("amvp.scales needs one switch per query scale (4: strides 32, 16, 8, 4)")
        if self.amvp.close_mm < 0:
            raise ConfigError("amvp.close_mm must be >= 0")
        if any(r % 32 for r in self.preprocessing.roi_size):
            raise ConfigError(f"preprocessing.roi_size must be multiples of 32 (SwinUNETR), got {self.preprocessing.roi_size}")

    @property
    def n_queries(self) -> int:
        """Queries that exist in this stage (organ queries, plus tumour queries in Stage 2)."""
        d = self.decoder
        return d.n_organ_queries + (d.n_tumor_queries if self.stage == 2 else 0)

    def with_stage(self, stage: int) -> ModelConfig:
        return dataclasses.replace(self, stage=stage)

    def replace(self, **changes: Any) -> ModelConfig:
        """Copy with top-level or dotted changes: ``cfg.replace(**{"ssm.backend": "torch"})``."""
        data = self.to_dict()
        for key, value in changes.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise ConfigError(f"unknown config key {key!r}")
            node[leaf] = value
        return ModelConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/torch-safe data (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        return _build(cls, data, "")

    def diff(self, other: ModelConfig) -> list[str]:
        """Human-readable differences ``key: self_value != other_value``."""
        out: list[str] = []
        _diff(self.to_dict(), other.to_dict(), "", out)
        return out


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """``"small"``/``"paper"`` (``config/model_<name>.yaml``) or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"model_{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("model_") for p in CONFIG_DIR.glob("model_*.yaml"))
        raise ConfigError(f"model config {name_or_path!r} not found (looked at {path}); known names: {known}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return ModelConfig.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{prefix}{name}.")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{prefix}{name}: expected a list, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _diff(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(a.get(k), b.get(k), f"{prefix}{k}.", out)
    elif a != b:
        out.append(f"{prefix[:-1]}: {a!r} != {b!r}")
