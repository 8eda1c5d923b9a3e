"""Diffusion-guided Query Refinement (DQR): tumour-query update at one scale."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .amvp import MaskedCrossAttention
from .layers import QueryBlock

_OFFSETS = tuple(itertools.product(range(3), repeat=3))  # 3x3x3 neighbourhood, as slices of a 1-padded map


def diffusion_weights(guide: Tensor, lam: float) -> Tensor:
    """w(G_i, G_j) = softmax over the 3x3x3 neighbourhood j of -||G_i - G_j||^2 / lambda^2.

    guide: (B, g, d, h, w) -> (B, 27, d, h, w). Neighbours outside the volume get weight 0; the
    centre always counts, so every softmax has a finite term.
    """
    d, h, w = guide.shape[2:]
    padded = F.pad(guide, (1, 1, 1, 1, 1, 1))
    inside = F.pad(guide.new_ones(1, 1, d, h, w, dtype=torch.bool), (1, 1, 1, 1, 1, 1))
    logits = []
    for z, y, x in _OFFSETS:
        neighbour = padded[:, :, z : z + d, y : y + h, x : x + w]
        dist = (guide - neighbour).pow(2).sum(1) / (lam * lam)
        logits.append((-dist).masked_fill(~inside[:, 0, z : z + d, y : y + h, x : x + w], float("-inf")))
    return torch.stack(logits, dim=1).softmax(dim=1)


def semantic_diffusion(features: Tensor, weights: Tensor, steps: int) -> Tensor:
    """U_i <- U_i + sum_j w_ij (U_j - U_i), ``steps`` times, with w from ``diffusion_weights``."""
    d, h, w = features.shape[2:]
    for _ in range(steps):
        padded = F.pad(features, (1, 1, 1, 1, 1, 1))
        delta = torch.zeros_like(features)
        for k, (z, y, x) in enumerate(_OFFSETS):
            delta = delta + weights[:, k : k + 1] * (padded[:, :, z : z + d, y : y + h, x : x + w] - features)
        features = features + delta
    return features


class DQRBlock(nn.Module):
    """Semantic diffusion of F_l guided by the deeper map, fusion, then masked tumour-query attention.

    U = Proj(F_l); G = upsampled output of the previous (coarser) block, or U itself at the
    coarsest scale; U~ = diffusion(U | W G); H = Fuse([U, U~]) is the key/value of the tumour
    queries' prompt-masked cross-attention and the guidance for the next, finer block.
    """

    def __init__(
        self, in_channels: int, dim: int, guidance_dim: int, steps: int, lam: float, num_heads: int, ffn_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.lam = lam
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=1)
        self.guide = nn.Conv3d(dim, guidance_dim, kernel_size=1)
        self.fuse = nn.Sequential(nn.Conv3d(2 * dim, dim, kernel_size=1), nn.GroupNorm(1, dim), nn.GELU())
        self.memory_norm = nn.LayerNorm(dim)
        self.cross = MaskedCrossAttention(dim, num_heads, dropout)
        self.block = QueryBlock(dim, num_heads, ffn_dim, dropout)

    def forward(self, queries: Tensor, feature: Tensor, guidance: Tensor | None,
                prompt: Tensor | None) -> tuple[Tensor, Tensor]:
        """queries (B, N_t, C); feature (B, C_l, d, h, w); guidance (B, C, d', h', w') or None;
        prompt (B, 1, d, h, w) bool, or None where the prompt is switched off at this scale
        (attend everywhere). Returns (queries', H as (B, C, d, h, w))."""
        u = self.proj(feature)
        g = u if guidance is None else F.interpolate(guidance, size=u.shape[2:], mode="trilinear", align_corners=False)
        diffused = semantic_diffusion(u, diffusion_weights(self.guide(g), self.lam), self.steps)
        fused = self.fuse(torch.cat([u, diffused], dim=1))
        memory = self.memory_norm(fused.flatten(2).transpose(1, 2))
        queries = self.cross(queries, memory, None if prompt is None else prompt.flatten(1))
        return self.block(queries), fused
