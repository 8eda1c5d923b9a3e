"""The DSM segmenter: a CT volume on its source grid in, a label volume on the same grid out.

Loaded once per worker (the model stays in memory between jobs). Preprocessing comes from the
checkpoint (orientation, spacing, HU window, ROI), inference is MONAI's sliding window with
Gaussian blending (AMP on CUDA), post-processing follows the model spec, and outputs are
resampled back to the source voxels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.catalog import Catalog, load_catalog
from model.checkpoint import load_checkpoint
from model.inference import Predictor

from . import grid
from .postprocess import dilate, postprocess


def segmenter_from_settings(settings: Any) -> "Segmenter":
    """The segmenter a node's ``inference`` settings describe (the node and ``dsm-node infer``)."""
    inf = settings.inference
    return Segmenter(
        settings.checkpoint_path, device=inf.device, sw_batch_size=inf.sw_batch_size, overlap=inf.overlap,
        amp=inf.amp, catalog_extra=inf.catalog_extra, clip_checkpoint=inf.clip_checkpoint,
        cpu_threads=inf.cpu_threads,
    )


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this machine")
    return device


@dataclass
class Segmentation:
    labels: np.ndarray  # (z, y, x) 1-based catalog index per voxel, 0 = background (source grid)
    catalog: Catalog  # the classes the labels refer to, in channel order
    anomaly: np.ndarray | None = None  # (z, y, x) float32 in [0, 1], when asked for
    timings: dict[str, float] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)  # class name -> voxels on the source grid


class Segmenter:
    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        amp: bool = True,
        catalog_extra: str | Path | None = None,
        clip_checkpoint: str | Path | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        if cpu_threads:
            # Process-wide. On a shared 2-core machine, 3 competing model processes made a
            # window take 2.5 s with 2 threads and 1.4 s with 1 (0.25 s alone): OpenMP threads
            # wait for descheduled peers.
            torch.set_num_threads(cpu_threads)
        self.device = pick_device(device)
        site_catalog = load_catalog(extra=catalog_extra)
        loaded = load_checkpoint(checkpoint, map_location="cpu", expect_catalog=site_catalog)
        self.model_version = loaded.version
        self.config = loaded.config
        self.preprocessing = loaded.preprocessing
        self.predictor = Predictor.from_checkpoint(loaded, catalog=site_catalog, clip_checkpoint=clip_checkpoint)
        self.predictor.to(self.device).eval()
        by_name = {e.name: e for e in site_catalog}
        self.catalog = Catalog([by_name[n] for n in self.predictor.class_names])
        self.sw_batch_size = sw_batch_size or loaded.config.inference.sw_batch_size
        self.overlap = loaded.config.inference.overlap if overlap is None else overlap
        self.amp = amp and self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "device": str(self.device),
            "classes": len(self.catalog),
            "spacing_mm": list(self.preprocessing["spacing"]),
            "roi": list(self.preprocessing["roi_size"]),
        }

    @torch.no_grad()
    def segment(self, hu: np.ndarray, affine_lps: np.ndarray, want_anomaly: bool = False, progress: bool = False) -> Segmentation:
        from monai.inferers import sliding_window_inference

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pre = self.preprocessing
        spacing = tuple(float(s) for s in pre["spacing"])
        roi = tuple(int(r) for r in pre["roi_size"])
        lo, hi = (float(v) for v in pre["hu_window"])
        gmap = grid.plan(hu.shape, affine_lps, spacing)  # type: ignore[arg-type]
        image = torch.from_numpy(grid.window(gmap.to_oriented(hu), lo, hi))
        image = grid.resample(image[None], gmap.model_shape)[0].numpy()
        box = grid.foreground_box(image)
        crop = np.ascontiguousarray(image[box])
        pad = [max(0, r - n) for r, n in zip(roi, crop.shape)]
        x = torch.from_numpy(np.pad(crop, [(0, p) for p in pad]))[None, None].to(self.device)
        timings["preprocess_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        with torch.autocast(self.device.type, enabled=self.amp):
            out = sliding_window_inference(
                x, roi, self.sw_batch_size, self.predictor, overlap=self.overlap, mode="gaussian",
                sw_device=self.device, device=torch.device("cpu"), progress=progress,
            )
        out = out[0].float()[(slice(None), *(slice(0, n) for n in crop.shape))].numpy()
        timings["inference_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        n_classes = len(self.catalog)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        masks = postprocess(out[:n_classes], list(self.catalog), voxel_ml)
        labels, found = self._to_source(out, masks, gmap, box)
        anomaly = self._channel_to_source(out[n_classes], gmap, box) if want_anomaly else None
        timings["postprocess_s"] = time.perf_counter() - t2
        return Segmentation(labels=labels, catalog=self.catalog, anomaly=anomaly, timings=timings, found=found)

    def _channel_to_source(self, channel: np.ndarray, gmap: grid.GridMap, box: tuple[slice, ...]) -> np.ndarray:
        full = np.zeros(gmap.model_shape, dtype=np.float32)
        full[box] = channel
        up = grid.resample(torch.from_numpy(full)[None], gmap.oriented_shape)[0].numpy()
        return gmap.from_oriented(up)

    def _to_source(
        self, out: np.ndarray, masks: np.ndarray, gmap: grid.GridMap, box: tuple[slice, ...]
    ) -> tuple[np.ndarray, dict[str, int]]:
        """Label volume on the source grid: organs compete by probability, tumours on top.

        Each kept class's probability is gated by its (slightly dilated) post-processed mask on
        the model grid, upsampled, and thresholded again at full resolution, so the decisions
        made on the coarse grid (largest component, parent organ) carry over with smooth edges.
        """
        dtype = np.uint8 if len(self.catalog) < 256 else np.uint16
        labels = np.zeros(gmap.oriented_shape, dtype=dtype)
        best = np.zeros(gmap.oriented_shape, dtype=np.float32)
        tumour_best = np.zeros(gmap.oriented_shape, dtype=np.float32)
        order = [i for i, e in enumerate(self.catalog) if e.is_organ] + [i for i, e in enumerate(self.catalog) if not e.is_organ]
        for i in order:
            if not masks[i].any():
                continue
            entry = self.catalog[i]
            gated = np.zeros(gmap.model_shape, dtype=np.float32)
            gated[box] = np.where(dilate(masks[i], 1), out[i], 0.0)
            up = grid.resample(torch.from_numpy(gated)[None], gmap.oriented_shape)[0].numpy()
            above = up >= entry.threshold
            if entry.is_organ:
                sel = above & (up > best) & (tumour_best == 0)
                best[sel] = up[sel]
            else:
                sel = above & (up > tumour_best)
                tumour_best[sel] = up[sel]
            labels[sel] = entry.index
        source = gmap.from_oriented(labels)
        counts = np.bincount(source.ravel(), minlength=len(self.catalog) + 1)
        found = {e.name: int(counts[e.index]) for e in self.catalog if counts[e.index] > 0}
        return source, found
