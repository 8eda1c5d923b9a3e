"""k-means Mask Mamba (kMMM) layer: one decoder step of the organ queries at one scale."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SSMConfig
from .layers import PixelTokens, QueryBlock
from .mamba import Mamba


class KMMMLayer(nn.Module):
    """Organ-query update at one scale (DSM spec, architecture item 3).

    R  = q K^T / sqrt(C)                  query responses = this layer's mask logits
    R' = R + Mamba(SiLU(LN(R)))           SSM over voxels in raster order, channels = queries
    A  = onehot(argmax_q R')              hard k-means assignment (no gradient)
    Q <- LN(Q + Proj(A V / (sum A + 1)))  cluster-mean update, then self-attention + FFN

    The argmax gives the SSM no gradient; the SSM learns through deep supervision of R' (the
    returned per-layer logits), which is why R' is returned for the loss.
    """

    def __init__(
        self, in_channels: int, dim: int, n_queries: int, num_heads: int, ffn_dim: int, ssm: SSMConfig, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.n_queries = n_queries
        self.pixels = PixelTokens(in_channels, dim)
        self.value = nn.Linear(dim, dim)
        self.query_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.response_norm = nn.LayerNorm(n_queries)
        self.ssm = Mamba(
            n_queries, d_state=ssm.d_state, d_conv=ssm.d_conv, expand=ssm.expand, backend=ssm.backend,
            chunk_size=ssm.chunk_size,
        )
        self.update = nn.Linear(dim, dim)
        self.update_norm = nn.LayerNorm(dim)
        self.block = QueryBlock(dim, num_heads, ffn_dim, dropout)

    def forward(self, queries: Tensor, feature: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, N, C), feature (B, C_l, d, h, w) -> (queries', R' as (B, N, d, h, w))."""
        tokens = self.pixels(feature)  # (B, V, C) keys
        values = self.value(tokens)
        q = self.query(self.query_norm(queries))
        response = q @ tokens.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, N, V)
        seq = F.silu(self.response_norm(response.transpose(1, 2)))  # (B, V, N): voxels are tokens
        refined = response + self.ssm(seq).transpose(1, 2)
        with torch.no_grad():
            assign = F.one_hot(refined.argmax(dim=1), self.n_queries).transpose(1, 2).to(values.dtype)  # (B, N, V)
        means = (assign @ values) / (assign.sum(-1, keepdim=True) + 1.0)
        queries = self.update_norm(queries + self.update(means))
        queries = self.block(queries)
        return queries, refined.unflatten(-1, feature.shape[2:])
