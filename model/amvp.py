"""Anomaly Mask Visual Prompt (AMVP): where no organ query is confident, tumour queries look."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EPS = 1e-6


def anomaly_score(organ_logits: Tensor, eps: float = EPS) -> Tensor:
    """S = -max over organ queries, min-max normalised per sample to [0, 1].

    organ_logits: (B, N_o, *spatial) -> (B, 1, *spatial). The range is guarded by ``eps``, so a
    constant map gives all zeros (and hence an empty prompt) instead of 0/0.
    """
    score = -organ_logits.amax(dim=1, keepdim=True)
    flat = score.flatten(1)
    low = flat.amin(dim=1).view(-1, *[1] * (score.dim() - 1))
    high = flat.amax(dim=1).view(-1, *[1] * (score.dim() - 1))
    return (score - low) / (high - low + eps)


def anomaly_prompt(organ_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Binary prompt P = (normalised S > threshold), (B, 1, *spatial) bool; never differentiable."""
    with torch.no_grad():
        return anomaly_score(organ_logits) > threshold


class MaskedCrossAttention(nn.Module):
    """Multi-head cross-attention of queries to voxels, restricted to a per-sample prompt.

    Logits of voxels outside the prompt are -inf. A sample whose prompt is empty attends
    everywhere (Mask2Former rule), so attention never becomes 0/0.
    Set ``record = True`` to keep the last attention weights (B, heads, N, V) in ``last_weights``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.record = False
        self.last_weights: Tensor | None = None

    @staticmethod
    def allowed_voxels(prompt: Tensor) -> Tensor:
        """prompt (B, V) bool -> voxels each sample may attend to (all, where the prompt is empty)."""
        return prompt | ~prompt.any(dim=1, keepdim=True)

    def forward(self, queries: Tensor, memory: Tensor, prompt: Tensor | None) -> Tensor:
        """queries (B, N, C), memory (B, V, C), prompt (B, V) bool or None (no restriction)."""
        b, n, c = queries.shape
        h = self.num_heads
        q = self.q(queries).view(b, n, h, c // h).transpose(1, 2)
        k = self.k(memory).view(b, -1, h, c // h).transpose(1, 2)
        v = self.v(memory).view(b, -1, h, c // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(c // h)  # (B, h, N, V)
        if prompt is not None:
            logits = logits.masked_fill(~self.allowed_voxels(prompt)[:, None, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)
        if self.record:
            self.last_weights = weights.detach()
        attended = (self.drop(weights) @ v).transpose(1, 2).reshape(b, n, c)
        return self.norm(queries + self.out(attended))
