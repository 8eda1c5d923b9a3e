"""Tiny training configurations shared by the training tests (CPU, seconds per step).

Imported by its qualified name (`tests.training.training_helpers`): tests/ is a package, so this
folder is `tests.training` and can never shadow the real `training` package (it once did, as a
top-level `training`, and importlib.resources found the dataset registry here)."""
from __future__ import annotations

from pathlib import Path

import yaml

TINY_MODEL = {
    "backbone.feature_size": 12,
    "backbone.window_size": 4,
    "backbone.num_heads": [1, 2, 4, 8],
    "decoder.query_dim": 32,
    "decoder.pixel_dim": 16,
    "decoder.ffn_dim": 64,
    "decoder.num_heads": 4,
    "dqr.guidance_dim": 8,
    "ssm.backend": "torch",
    "preprocessing.spacing": [8.0, 8.0, 8.0],
    "preprocessing.roi_size": [64, 32, 32],  # smallest ROI whose stride-32 map has > 1 voxel
}


def tiny_config(tmp: Path, stage: int, out: str, steps: int, **extra) -> Path:
    dataset = "phantom_organs" if stage == 1 else "phantom_seen"
    cfg = {
        "stage": stage,
        "model": "small",
        "model_overrides": TINY_MODEL,
        "init_query_std": 1.0,
        "data": {
            "train": {"phantoms": {"seed": 10, "n": 3, "tumors": "seen", "spacing": 8.0, "dataset": dataset}},
            "val": {"phantoms": {"seed": 50, "n": 1, "tumors": "seen", "spacing": 8.0, "dataset": dataset}},
            "cache": "memory",
        },
        "crop": {"samples_per_volume": 1, "tumor_prob": 0.5 if stage == 2 else 0.0},
        "augment": {"prob_affine": 0.5, "prob_elastic": 0.3, "prob_shift": 0.5, "prob_gamma": 0.5},
        "optim": {"lr": 1e-3, "batch_size": 1, "grad_accum": 2, "max_steps": steps, "warmup_steps": 1},
        "run": {"out_dir": str(tmp / out), "seed": 3, "ckpt_every": 100, "val_every": steps, "log_every": 1,
                "version": f"test-stage{stage}", "threads": 2},
    }
    for k, v in extra.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_stage2_checkpoint(path: Path, version: str, **save_kwargs) -> Path:
    """An untrained tiny Stage-2 model saved as a checkpoint with the catalog's text embeddings
    (seed 0; ``save_kwargs``: training=, calibration=, ... of model.checkpoint.save_checkpoint)."""
    import torch

    from model.catalog import load_catalog
    from model.checkpoint import save_checkpoint
    from model.config import load_model_config
    from model.network import build_model
    from model.text import class_embeddings

    catalog = load_catalog()
    cfg = load_model_config("small").replace(**TINY_MODEL).with_stage(2)
    torch.manual_seed(0)
    net = build_model(cfg)
    emb = class_embeddings(catalog)
    net.set_text_embeddings(emb)
    return save_checkpoint(path, net, catalog, emb, version, **save_kwargs)
