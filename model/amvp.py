"""Anomaly Mask Visual Prompt (AMVP): where no organ query is confident, tumour queries look."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .envelope import envelope_t


def anomaly_prompt(organ_logits: Tensor, radius_vox: Sequence[float]) -> Tensor:
    """AMVP prompt P = Env AND (no organ claims the voxel), (B, 1, *spatial) bool, no gradient.

    organ_logits: R' of the organ queries (B, N_o, *spatial). A voxel is claimed when its best
    organ response is positive (sigmoid > 0.5); Env = the claimed voxels closed with a ball of
    ``radius_vox`` (voxels of this scale per axis) and hole-filled. The criterion is absolute:
    a patch with no unclaimed hole inside an organ gives an empty prompt (attend everywhere),
    where a per-patch min-max threshold always selected something, mostly fat and air.
    """
    with torch.no_grad():
        claimed = organ_logits.amax(dim=1, keepdim=True) > 0
        return envelope_t(claimed, radius_vox) & ~claimed


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
