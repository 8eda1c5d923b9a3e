"""Inference entry point: a patch-wise predictor for MONAI ``sliding_window_inference``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .catalog import Catalog
from .checkpoint import LoadedCheckpoint, check_catalog
from .network import DSMNet
from .text import DEFAULT_CLIP_MODEL, EmbeddingTable, class_embeddings, load_default_table

ANOMALY_CHANNEL = "anomaly"


class Predictor(nn.Module):
    """Wraps a DSMNet and its class text embeddings; one call per ROI patch.

    ``forward(x)``: x (B, 1, D, H, W) float, preprocessed CT in [0, 1] (RAS, model spacing, HU
    window scaled), each spatial size a multiple of 32 (the ROI). Returns float32
    (B, C + 1, D, H, W):

    * channels 0 .. C-1: class probabilities P_c in [0, 1], in the order of ``class_names``
      (the checkpoint's classes, then classes appended by the site's catalog, then
      ``extra_names``). Stage 2: P_c = sum_q p(c | q) sigmoid(M_q) over the supervised queries
      (organs and, when ``seen_tumors`` is given, the seen tumours); classes without a trained
      query of their own get a map through text similarity only (zero-shot).
      Stage 1: P_c = sigmoid(M_c) for the organ classes.
    * channel C: the anomaly map sigmoid(S) = 1 - max over organ queries of sigmoid(M_q), in
      [0, 1], higher = less organ-like. It is a monotone map of S without per-patch
      normalisation, so patches blend consistently and voxel AUROC equals that of S.

    ``channel_names`` lists the C + 1 channel names. Outputs blend linearly, so MONAI's Gaussian
    sliding-window blending is valid for every channel.
    """

    trained: Tensor | None  # buffer: which queries were trained (None: all of them)

    def __init__(
        self,
        model: DSMNet,
        class_names: Sequence[str],
        embeddings: Tensor | None = None,
        extra_names: Sequence[str] = (),
        extra_embeddings: Tensor | None = None,
        seen_tumors: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        names = list(class_names) + list(extra_names)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate class names: {dup}")
        if model.stage == 1:
            if extra_names or len(class_names) != model.n_organ:
                raise ValueError(
                    f"a Stage-1 model outputs exactly its {model.n_organ} organ classes (no text alignment, "
                    f"no zero-shot classes); got {len(class_names)} class names and {len(extra_names)} extra"
                )
            table = torch.zeros(0, model.cfg.text.dim)
        else:
            if embeddings is None or embeddings.shape[0] != len(class_names):
                raise ValueError(f"Stage 2 needs one embedding row per class name ({len(class_names)})")
            rows = [embeddings.float()]
            if extra_names:
                if extra_embeddings is None or extra_embeddings.shape[0] != len(extra_names):
                    raise ValueError(f"need one embedding row per extra class name ({len(extra_names)})")
                rows.append(extra_embeddings.float())
            table = F.normalize(torch.cat(rows), dim=-1)
            if table.shape[0] < model.n_queries:
                raise ValueError(f"need at least {model.n_queries} classes (one per query), got {table.shape[0]}")
        self.class_names = names
        self.register_buffer("text", table.to(next(model.parameters()).device), persistent=False)
        # Stage 2 with a recorded seen-tumour list: only supervised queries (organs, seen
        # tumours) enter P_c (DSMNet.semantic_probs); None: every query (older checkpoints).
        trained = None
        if model.stage == 2 and seen_tumors is not None:
            seen = set(seen_tumors)
            trained = torch.tensor([q < model.n_organ or names[q] in seen for q in range(model.n_queries)])
        self.register_buffer("trained", trained, persistent=False)

    @property
    def channel_names(self) -> list[str]:
        return [*self.class_names, ANOMALY_CHANNEL]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x, text_embeddings=self.text if self.model.stage == 2 else None)
        probs = self.model.semantic_probs(out, self.trained)
        anomaly = out["anomaly"].float().sigmoid()
        return torch.cat([probs, anomaly], dim=1)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: LoadedCheckpoint,
        catalog: Catalog | None = None,
        extra_names: Sequence[str] = (),
        clip_checkpoint: str | Path | None = None,
        clip_model: str = DEFAULT_CLIP_MODEL,
        backend: str | None = None,
    ) -> Predictor:
        """Build from a loaded checkpoint.

        ``catalog``: the site's catalog; it must start with the checkpoint's classes in the same
        order, and its appended classes become zero-shot channels. ``extra_names``: further
        zero-shot classes by name. Embeddings for names outside the checkpoint and the shipped
        table come from a local CLIP checkpoint (``clip_checkpoint``).
        """
        model = checkpoint.build_model(backend=backend)
        names = list(checkpoint.class_names)
        if model.stage == 1:
            return cls(model, names[: model.n_organ])
        prompts = list(checkpoint.prompt_names)
        if catalog is not None:
            check_catalog(names, catalog, allow_extra=True, where=str(checkpoint.path))
            appended = list(catalog)[len(names):]
            names += [e.name for e in appended]
            prompts += [e.prompt_name for e in appended]
        new_prompts = prompts[len(checkpoint.class_names):] + list(extra_names)
        # Known rows come from the checkpoint (what the model was trained with), then the shipped table.
        known = EmbeddingTable(tuple(checkpoint.prompt_names), checkpoint.embeddings.cpu(), str(checkpoint.path))
        shipped = load_default_table()
        rows = []
        for p in new_prompts:
            row = known.get(p)
            rows.append(row if row is not None else shipped.get(p))
        missing = [p for p, r in zip(new_prompts, rows) if r is None]
        if missing:
            encoded = class_embeddings(missing, clip_checkpoint=clip_checkpoint, model_name=clip_model, table=known)
            it = iter(encoded)
            rows = [r if r is not None else next(it) for r in rows]
        # every None row was filled above
        new = torch.stack(rows) if rows else torch.zeros(0, checkpoint.embeddings.shape[1])  # type: ignore[arg-type]
        n_catalog = len(names)
        table = torch.cat([checkpoint.embeddings.cpu(), new[: n_catalog - len(checkpoint.class_names)]])
        extra = new[n_catalog - len(checkpoint.class_names):]
        return cls(model, names, table, list(extra_names), extra if len(extra_names) else None,
                   seen_tumors=checkpoint.seen_tumors)
