"""Shared helpers of the model tests (`from tests.model.model_helpers import ...`)."""
from __future__ import annotations

from model.config import ModelConfig, load_model_config

# Smallest network that keeps every architectural piece: SwinUNETR feature_size 12,
# C = 32, D = 16, ROI 64^3 (stride-32 map 2^3, so instance norms see >1 voxel in training).
TINY = {
    "backbone.feature_size": 12,
    "decoder.query_dim": 32,
    "decoder.pixel_dim": 16,
    "decoder.ffn_dim": 64,
    "dqr.guidance_dim": 8,
    "ssm.backend": "torch",
}


def tiny_config(stage: int = 2) -> ModelConfig:
    return load_model_config("small").replace(stage=stage, **TINY)
