"""DSMNet: SwinUNETR backbone + kMMM query decoder (+ AMVP, DQR, CLIP alignment in Stage 2)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .amvp import anomaly_prompt
from .backbone import QUERY_STRIDES, SwinUNETRFeatures
from .config import ModelConfig
from .dqr import DQRBlock
from .kmmm import KMMMLayer
from .layers import MLP, QueryBlock


@dataclass(frozen=True)
class LoadReport:
    """Outcome of a non-strict load: keys the model lacks weights for, and weights it did not use."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def __str__(self) -> str:
        def short(keys: tuple[str, ...]) -> str:
            prefixes = sorted({k.split(".")[0] for k in keys})
            return f"{len(keys)} keys ({', '.join(prefixes)})" if keys else "none"

        return f"missing: {short(self.missing)}; unexpected: {short(self.unexpected)}"


class DSMNet(nn.Module):
    """The DSM segmentation network; ``cfg.stage`` selects Stage 1 (organs) or Stage 2 (all).

    Query i is class i of the catalog (organ queries 0..N_o-1, tumour queries N_o..N_o+N_t-1).

    ``forward(x, text_embeddings=None)`` with x (B, 1, D, H, W), each size a multiple of 32,
    returns a dict (N = number of queries in this stage, N_o organ queries, K text rows):

    ``mask_logits``     (B, N, D, H, W)   M_q = s * cos(MaskKernel(Q_q), E), s learned in
                        ``decoder.mask_scale_range``
    ``layer_logits``    list of 4 (B, N_o, D/s, H/s, W/s), s = 32, 16, 8, 4: R' of every kMMM
                        layer (deep supervision; the only path by which the SSM learns)
    ``anomaly``         (B, 1, D, H, W)   S = -max over organ queries of M_q (unnormalised logit
                        units; higher = less organ-like)
    ``class_logits``    (B, N_o)          Stage 1: MLP presence logit of class i from query i
    ``class_cos_logits``(B, N, K)         Stage 2: cos(q_i, t_j) / tau; softmax over j = p(j | q_i)
    ``prompts``         Stage 2: list of 4 (B, 1, D/s, H/s, W/s) bool AMVP prompts, None at
                        scales where ``amvp.scales`` switches the prompt off
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dec = cfg.decoder
        c = dec.query_dim
        self.stage = cfg.stage
        self.n_organ = dec.n_organ_queries
        self.n_tumor = dec.n_tumor_queries if cfg.stage == 2 else 0
        self.backbone = SwinUNETRFeatures(cfg.in_channels, cfg.backbone)
        self.organ_queries = nn.Parameter(torch.randn(self.n_organ, c) * 0.02)
        self.kmmm = nn.ModuleList(
            KMMMLayer(ch, c, self.n_organ, dec.num_heads, dec.ffn_dim, cfg.ssm, dec.dropout)
            for ch in self.backbone.query_channels
        )
        self.pixel_proj = nn.Conv3d(self.backbone.pixel_channels, dec.pixel_dim, kernel_size=1)
        self.mask_kernel = MLP(c, c, dec.pixel_dim)
        # log of the mask-logit scale s; clamped in forward (see DecoderConfig.mask_scale_range)
        if dec.bounded_masks:
            self.mask_log_scale = nn.Parameter(torch.tensor(math.log(dec.mask_scale_init)))
        if self.n_tumor and dec.tumor_mask_prior is not None:
            prior = dec.tumor_mask_prior
            self.tumor_mask_bias = nn.Parameter(torch.full((self.n_tumor,), -math.log((1.0 - prior) / prior)))
        spacing = cfg.preprocessing.spacing
        # AMVP closing radius in cells of each query scale (cells are spacing * stride mm).
        self.prompt_radius = [
            tuple(cfg.amvp.close_mm / (float(sp) * stride) for sp in spacing) if on else None
            for stride, on in zip(QUERY_STRIDES, cfg.amvp.scales)
        ]
        if cfg.stage == 1:
            self.class_head = MLP(c, c, 1)
        else:
            q = cfg.dqr
            self.tumor_queries = nn.Parameter(torch.randn(self.n_tumor, c) * 0.02)
            self.dqr = nn.ModuleList(
                DQRBlock(ch, c, q.guidance_dim, q.steps, q.lam, dec.num_heads, dec.ffn_dim, dec.dropout)
                for ch in self.backbone.query_channels
            )
            self.interaction = nn.ModuleList(
                QueryBlock(c, dec.num_heads, dec.ffn_dim, dec.dropout) for _ in self.backbone.query_channels
            )
            if dec.interaction_gate:
                self.interaction_gate = nn.Parameter(torch.zeros(len(self.backbone.query_channels)))
            self.class_proj = MLP(c, c, cfg.text.dim)
            self.tau = cfg.text.tau
        # Class text embeddings are inputs (a site may extend the catalog), not weights.
        self.register_buffer("text_embeddings", torch.zeros(0, cfg.text.dim), persistent=False)

    @property
    def n_queries(self) -> int:
        return self.n_organ + self.n_tumor

    def set_text_embeddings(self, table: Tensor) -> None:
        """Default class text embeddings (K, text_dim) for Stage 2; stored L2-normalised."""
        if table.dim() != 2 or table.shape[1] != self.cfg.text.dim:
            raise ValueError(f"text embeddings must be (K, {self.cfg.text.dim}), got {tuple(table.shape)}")
        if table.shape[0] < self.n_queries:
            raise ValueError(f"need at least {self.n_queries} text rows (one per query), got {table.shape[0]}")
        device = self.organ_queries.device
        self.text_embeddings = F.normalize(table.detach().float(), dim=-1).to(device)

    def forward(self, x: Tensor, text_embeddings: Tensor | None = None) -> dict[str, Tensor | list[Tensor]]:
        return self.decode(self.backbone(x), text_embeddings)

    def decode(self, feats: dict[str, Any], text_embeddings: Tensor | None = None) -> dict[str, Tensor | list[Tensor]]:
        """Everything after the backbone: queries, prompts, masks and class logits from the
        backbone's features (``self.backbone(x)``), so that a study of the decoder alone can
        reuse features computed once."""
        batch = feats["pixel"].shape[0]
        organ = self.organ_queries.unsqueeze(0).expand(batch, -1, -1)
        tumor = self.tumor_queries.unsqueeze(0).expand(batch, -1, -1) if self.stage == 2 else None
        layer_logits: list[Tensor] = []
        prompts: list[Tensor] = []
        guidance = None
        for level, feature in enumerate(feats["scales"]):
            organ, refined = self.kmmm[level](organ, feature)
            layer_logits.append(refined)
            if tumor is not None:
                radius = self.prompt_radius[level]
                prompt = anomaly_prompt(refined, radius) if radius is not None else None
                prompts.append(prompt)  # type: ignore[arg-type]  # None at a level without a prompt radius
                tumor, guidance = self.dqr[level](tumor, feature, guidance, prompt)
                joint = self.interaction[level](torch.cat([organ, tumor], dim=1))
                mixed, tumor = joint.split([self.n_organ, self.n_tumor], dim=1)
                if hasattr(self, "interaction_gate"):
                    organ = organ + self.interaction_gate[level].to(organ.dtype) * (mixed - organ)
                else:
                    organ = mixed
        queries = organ if tumor is None else torch.cat([organ, tumor], dim=1)
        pixel = F.normalize(self.pixel_proj(feats["pixel"]), dim=1)  # E: (B, D, X, Y, Z), unit norm
        if self.cfg.decoder.bounded_masks:
            kernels = F.normalize(self.mask_kernel(queries), dim=-1)
            lo, hi = self.cfg.decoder.mask_scale_range
            scale = self.mask_log_scale.exp().clamp(lo, hi)
            mask_logits = scale * torch.einsum("bnd,bdxyz->bnxyz", kernels, pixel)
        else:  # legacy checkpoints
            mask_logits = torch.einsum("bnd,bdxyz->bnxyz", self.mask_kernel(queries), pixel)
        if hasattr(self, "tumor_mask_bias"):
            bias = torch.cat([self.tumor_mask_bias.new_zeros(self.n_organ), self.tumor_mask_bias])
            mask_logits = mask_logits + bias.to(mask_logits.dtype).view(1, -1, 1, 1, 1)
        out: dict[str, Tensor | list[Tensor]] = {
            "mask_logits": mask_logits,
            "layer_logits": layer_logits,
            "anomaly": -mask_logits[:, : self.n_organ].amax(dim=1, keepdim=True),
        }
        if self.stage == 1:
            out["class_logits"] = self.class_head(queries).squeeze(-1)
        else:
            out["class_cos_logits"] = self.class_cos_logits(queries, text_embeddings)
            out["prompts"] = prompts
        return out

    def class_cos_logits(self, queries: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        """Stage 2: cos(class_proj(q), text row) / tau for queries (B, N, C) -> (B, N, K)."""
        # float32 even under autocast: with tau = 0.01 a bf16 cosine error of 4e-3 would move
        # a logit by 0.4, as much as separates a left organ from its right twin in CLIP space.
        with torch.autocast(queries.device.type, enabled=False):
            q = F.normalize(self.class_proj(queries.float()), dim=-1)
            return q @ self._text(text_embeddings).float().t() / self.tau

    def _text(self, table: Tensor | None) -> Tensor:
        if table is None:
            table = self.text_embeddings
            if table.shape[0] == 0:
                raise RuntimeError(
                    "Stage 2 needs class text embeddings: call set_text_embeddings(table) "
                    "(model.text.class_embeddings(catalog)) or pass text_embeddings="
                )
            return table
        if table.shape[0] < self.n_queries:
            raise ValueError(f"need at least {self.n_queries} text rows (one per query), got {table.shape[0]}")
        return F.normalize(table.float(), dim=-1)

    def semantic_probs(self, out: dict[str, Tensor | list[Tensor]], trained: Tensor | None = None) -> Tensor:
        """Class-wise probability maps (B, K, D, H, W).

        Stage 2: P_c = sum_q p(c | q) sigmoid(M_q) over the K text rows (MaskFormer semantic
        inference), clipped to 1. Stage 1: P_c = sigmoid(M_c) for the N_o organ classes.

        ``trained`` (N,) bool: the queries whose masks were supervised (organs and the seen
        tumours); the others add nothing. A tumour query whose class was never labelled gets
        no mask loss at all, so its mask is whatever the shared pixel embedding makes of a
        random kernel; through p(c | q) (CLIP neighbours: "adrenal cyst" -> "kidney cyst") it
        leaked into trained classes (dsm-small-demo-0.4, phantoms 5000-5007: with all queries
        "Kidney Cyst" covered 59-82 % of the right kidney; right-kidney DSC 0.18, 0.64 with
        the untrained queries left out). Their classes get the zero-shot path instead.
        """
        masks = out["mask_logits"].float().sigmoid()  # type: ignore[union-attr]
        if self.stage == 1:
            return masks
        if trained is not None:
            masks = masks * trained.to(masks.device, masks.dtype).view(1, -1, *([1] * (masks.dim() - 2)))
        p = out["class_cos_logits"].float().softmax(dim=-1)  # type: ignore[union-attr]
        probs = torch.einsum("bnk,bnv->bkv", p, masks.flatten(2)).clamp_(max=1.0)
        return probs.unflatten(-1, masks.shape[2:])

    def load_stage1(self, state_dict: dict[str, Tensor]) -> LoadReport:
        """Load a Stage-1 state dict non-strictly (into a Stage-1 or Stage-2 model).

        Stage 2 reports the new tumour modules as missing and the Stage-1 class head as
        unexpected. Shapes of shared weights must match (an error names the key otherwise).
        """
        own = self.state_dict()
        bad = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
        if bad:
            k = bad[0]
            raise ValueError(
                f"{len(bad)} weights differ in shape, e.g. {k}: checkpoint {tuple(state_dict[k].shape)} vs "
                f"model {tuple(own[k].shape)} (was the checkpoint made with another model config?)"
            )
        result = self.load_state_dict(state_dict, strict=False)
        return LoadReport(tuple(result.missing_keys), tuple(result.unexpected_keys))


def build_model(cfg: ModelConfig) -> DSMNet:
    return DSMNet(cfg)
