"""Small building blocks shared by the decoder modules."""
from __future__ import annotations

from torch import Tensor, nn


class QueryBlock(nn.Module):
    """Query self-attention then FFN, each residual followed by LayerNorm (post-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, ffn_dim, dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, q: Tensor) -> Tensor:
        q = self.norm1(q + self.attn(q, q, q, need_weights=False)[0])
        return self.norm2(q + self.ffn(q))


class MLP(nn.Sequential):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim_out))


class PixelTokens(nn.Module):
    """1x1x1 projection of a feature map to ``dim`` channels, LayerNorm per voxel, as (B, V, dim)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feature: Tensor) -> Tensor:
        return self.norm(self.proj(feature).flatten(2).transpose(1, 2))
