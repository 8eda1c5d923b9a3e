"""Release a trained checkpoint (e.g. weights/dsm-small-demo.pt)."""
from __future__ import annotations

from pathlib import Path

import torch

from model.catalog import load_catalog
from model.checkpoint import load_checkpoint, save_checkpoint


def export_weights(src: Path, dst: Path, version: str | None = None, half: bool = False) -> Path:
    """Re-write a model checkpoint under a release version; half stores float weights as fp16
    (they are cast back to the model's float32 on load)."""
    ckpt = load_checkpoint(src)
    model = ckpt.build_model()
    if half:
        model = model.half()
    catalog = load_catalog()
    names = ckpt.class_names
    if names != catalog.names[: len(names)]:
        raise ValueError(f"{src}: class order differs from the catalog")
    training = dict(ckpt.training)
    training["exported_from"] = str(src)
    training["weights_dtype"] = "float16" if half else "float32"
    path = save_checkpoint(dst, model, names, ckpt.embeddings, version or ckpt.version, training,
                           prompt_names=ckpt.prompt_names, calibration=ckpt.calibration)
    return path
