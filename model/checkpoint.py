"""Checkpoint format: weights + everything needed to use them correctly.

The file is ``torch.save`` of plain containers and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load). Payload:

    format          "dsm-checkpoint/1"
    version         model version string shown to users, e.g. "dsm-small-demo-0.1"
    config          ModelConfig.to_dict()
    catalog         names, prompt_names (class order = query/text-row order), embeddings
                    (K, text_dim) float32 L2-normalised, embeddings_sha256
    preprocessing   orientation, spacing, hu_window, roi_size, crop_margin (what inference must
                    reproduce)
    training        summary dict (plain data: epochs, datasets, seen_tumors (older files: seen_tumours),
                    labelled (every class a training set of these weights labelled, init included;
                    absent: not recorded), metrics ...)
    calibration     optional: per-class thresholds and the zero-shot threshold chosen on
                    validation data at the end of training (model/segment.py reads them)
    state_dict      network weights
    created         ISO-8601 UTC time; torch_version
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .catalog import Catalog
from .config import ConfigError, ModelConfig
from .network import DSMNet
from .text import embeddings_sha256

FORMAT = "dsm-checkpoint/1"
_REQUIRED = ("format", "version", "config", "catalog", "preprocessing", "training", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit what the caller expects; the message says why."""


@dataclass
class LoadedCheckpoint:
    path: Path
    version: str
    config: ModelConfig
    class_names: list[str]
    prompt_names: list[str]
    embeddings: Tensor
    embeddings_sha256: str
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    state_dict: dict[str, Tensor] = field(repr=False)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def seen_tumors(self) -> list[str] | None:
        """Tumour classes trained with labels (None: the file does not say)."""
        seen = self.training.get("seen_tumors", self.training.get("seen_tumours"))  # older files: British key
        return None if seen is None else list(seen)

    @property
    def labelled(self) -> list[str] | None:
        """Classes a training set of these weights labelled, both stages (None: not recorded)."""
        labelled = self.training.get("labelled")
        return None if labelled is None else list(labelled)

    def build_model(self, backend: str | None = None) -> DSMNet:
        """The network with these weights (strict load) and class embeddings, in eval mode."""
        cfg = self.config if backend is None else self.config.replace(**{"ssm.backend": backend})
        model = DSMNet(cfg)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: weights do not fit the stored config: {exc}") from None
        if cfg.stage == 2:
            model.set_text_embeddings(self.embeddings)
        device = next(iter(self.state_dict.values())).device
        return model.to(device).eval()


def save_checkpoint(
    path: str | Path,
    model: DSMNet,
    class_names: Catalog | Sequence[str],
    embeddings: Tensor,
    version: str,
    training: Mapping[str, Any] | None = None,
    prompt_names: Sequence[str] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``class_names`` (or a Catalog) fixes the class order."""
    if isinstance(class_names, Catalog):
        prompt_names = class_names.prompt_names if prompt_names is None else prompt_names
        class_names = class_names.names
    names = list(class_names)
    prompts = list(prompt_names) if prompt_names is not None else names
    if embeddings.dim() != 2 or embeddings.shape[0] != len(names):
        raise CheckpointError(f"embeddings must be ({len(names)}, dim) for {len(names)} classes, got {tuple(embeddings.shape)}")
    if len(prompts) != len(names):
        raise CheckpointError(f"{len(prompts)} prompt names for {len(names)} classes")
    if len(names) < model.n_queries:
        raise CheckpointError(f"the model has {model.n_queries} queries but only {len(names)} class names were given")
    training = dict(training or {})
    _require_plain(training, "training")
    calibration = dict(calibration or {})
    _require_plain(calibration, "calibration")
    if not isinstance(version, str) or not version:
        raise CheckpointError("version must be a non-empty string")
    emb = torch.nn.functional.normalize(embeddings.detach().to("cpu", torch.float32), dim=-1)
    cfg = model.cfg
    payload = {
        "format": FORMAT,
        "version": version,
        "config": cfg.to_dict(),
        "catalog": {
            "names": names,
            "prompt_names": prompts,
            "embeddings": emb,
            "embeddings_sha256": embeddings_sha256(emb),
        },
        "preprocessing": cfg.to_dict()["preprocessing"],
        "training": training,
        "calibration": calibration,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # TorchVersion would break weights_only loading
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expect_catalog: Catalog | Sequence[str] | None = None,
    expect_config: ModelConfig | None = None,
    allow_extra_classes: bool = True,
) -> LoadedCheckpoint:
    """Read a checkpoint safely and check it against what the caller will use it with.

    ``expect_catalog``: the classes the caller will output. Every checkpoint class must appear
    at the same position; extra classes after them are allowed (zero-shot, by text similarity)
    unless ``allow_extra_classes`` is False. ``expect_config``: must equal the stored config.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable DSM checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a DSM checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    raw_config = dict(payload["config"])
    if "mask_log_scale" not in payload["state_dict"] and "bounded_masks" not in raw_config.get("decoder", {}):
        # Made before bounded mask logits (dsm-small-demo-0.2 and older): the plain dot product.
        raw_config["decoder"] = {**raw_config.get("decoder", {}), "bounded_masks": False}
    if "tumor_mask_bias" not in payload["state_dict"] and "tumor_mask_prior" not in raw_config.get("decoder", {}):
        # Made before the tumour mask prior (dsm-small-demo-0.3 and older): no bias.
        raw_config["decoder"] = {**raw_config.get("decoder", {}), "tumor_mask_prior": None}
    state = payload["state_dict"]
    if (any(k.startswith("interaction.") for k in state) and "interaction_gate" not in state
            and "interaction_gate" not in raw_config.get("decoder", {})):
        # Made before the gated organ-tumour interaction (dsm-small-demo-0.4 and older): ungated.
        raw_config["decoder"] = {**raw_config.get("decoder", {}), "interaction_gate": False}
    try:
        config = ModelConfig.from_dict(raw_config)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: its model config does not fit this version of the code: {exc}") from None
    cat = payload["catalog"]
    emb = cat["embeddings"]
    if embeddings_sha256(emb) != cat["embeddings_sha256"]:
        raise CheckpointError(f"{path}: class embeddings do not match their recorded sha256 (file damaged or edited)")
    loaded = LoadedCheckpoint(
        path=path,
        version=payload["version"],
        config=config,
        class_names=list(cat["names"]),
        prompt_names=list(cat["prompt_names"]),
        embeddings=emb.float(),
        embeddings_sha256=cat["embeddings_sha256"],
        preprocessing=dict(payload["preprocessing"]),
        training=dict(payload["training"]),
        state_dict=payload["state_dict"],
        calibration=dict(payload.get("calibration") or {}),
    )
    # Keys added to the preprocessing block later (crop_margin) take the config's default.
    stored = config.to_dict()["preprocessing"]
    loaded.preprocessing = {**stored, **loaded.preprocessing}
    if loaded.preprocessing != stored:
        raise CheckpointError(f"{path}: preprocessing block {loaded.preprocessing} disagrees with the stored config")
    if expect_catalog is not None:
        check_catalog(loaded.class_names, expect_catalog, allow_extra_classes, where=str(path))
    if expect_config is not None:
        diffs = config.diff(expect_config)
        if diffs:
            raise CheckpointError(
                f"{path}: model config differs from the expected one (checkpoint != expected): " + "; ".join(diffs)
            )
    return loaded


def check_catalog(
    checkpoint_names: Sequence[str], expected: Catalog | Sequence[str], allow_extra: bool = True, where: str = "checkpoint"
) -> None:
    """Raise CheckpointError explaining how ``expected`` differs from the checkpoint's classes."""
    want = expected.names if isinstance(expected, Catalog) else list(expected)
    have = list(checkpoint_names)
    gone = [n for n in have if n not in want]
    if gone:
        raise CheckpointError(
            f"{where}: the catalog lacks {len(gone)} class(es) the model was trained with: {gone}. "
            "Use the catalog the checkpoint was made with (sites may only append classes)."
        )
    for i, (a, b) in enumerate(zip(have, want)):
        if a != b:
            raise CheckpointError(
                f"{where}: class order differs at index {i + 1}: checkpoint has {a!r}, catalog has {b!r}. "
                "Output channels follow the checkpoint's order; restore that order (append new classes at the end)."
            )
    extra = want[len(have):]
    if extra and not allow_extra:
        raise CheckpointError(f"{where}: the catalog has class(es) the checkpoint was not trained with: {extra}")


def _require_plain(value: Any, where: str) -> None:
    """Only types torch.load(weights_only=True) accepts, so the checkpoint stays safely loadable."""
    if value is None or isinstance(value, (str, int, float, bool, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _require_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} must be str or int")
            _require_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data (use str/int/float/bool/list/dict/tensor)")
