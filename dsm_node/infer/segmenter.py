"""The DSM segmenter of the node: a CT volume on its source grid in, a label volume out.

Loaded once per worker (the model stays in memory between jobs). Everything between the HU
volume and the labels is ``model.segment`` — the same code ``dsm-train eval`` measures.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.catalog import Catalog, load_catalog
from model.grid import LPS_TO_RAS
from model.segment import VolumeSegmenter, pick_device

__all__ = ["Segmentation", "Segmenter", "pick_device", "segmenter_from_settings"]

log = logging.getLogger("dsm_node.infer")


def segmenter_from_settings(settings: Any) -> Segmenter:
    """The segmenter a node's ``inference`` settings describe (the node and ``dsm-node infer``)."""
    inf = settings.inference
    return Segmenter(
        settings.checkpoint_path, device=inf.device, sw_batch_size=inf.sw_batch_size, overlap=inf.overlap,
        amp=inf.amp, catalog_extra=inf.catalog_extra, clip_checkpoint=inf.clip_checkpoint,
        cpu_threads=inf.cpu_threads, exclude_classes=inf.exclude_classes,
    )


@dataclass
class Segmentation:
    labels: np.ndarray  # (z, y, x) 1-based catalog index per voxel, 0 = background (source grid)
    catalog: Catalog  # the classes the labels refer to, in channel order
    anomaly: np.ndarray | None = None  # (z, y, x) float32 in [0, 1], when asked for
    # stream_anomaly=True instead: the anomaly map as blocks of planes in NIfTI order,
    # (k0, (i, j, dk) float32), k = the slice axis (model.segment.to_source_slabs)
    anomaly_slabs: Callable[[], Iterator[tuple[int, np.ndarray]]] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)  # class name -> voxels on the source grid


class Segmenter:
    """The node's adapter around ``model.segment.VolumeSegmenter``: DICOM (z, y, x) arrays with
    an LPS affine in and out; the model code does everything else, exactly as in evaluation."""

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
        exclude_classes: Sequence[str] = (),
    ) -> None:
        if cpu_threads:
            # Process-wide. On a shared 2-core machine, 3 competing model processes made a
            # window take 2.5 s with 2 threads and 1.4 s with 1 (0.25 s alone): OpenMP threads
            # wait for descheduled peers.
            torch.set_num_threads(cpu_threads)
        self.model = VolumeSegmenter.from_checkpoint(
            checkpoint, catalog=load_catalog(extra=catalog_extra), device=device, overlap=overlap,
            sw_batch_size=sw_batch_size, amp=amp, clip_checkpoint=clip_checkpoint,
        )
        self.model_version = self.model.model_version
        self.device = self.model.device
        self.catalog = self.model.catalog
        self.excluded = excluded_classes(self.model, exclude_classes)
        about = self.describe()
        never = about["not_found_by_calibration"] + about["labelled_by_no_training_set"]
        log.info("model %s loaded on %s; never drawn: %s; no zero-shot tumour drawn in: %s; excluded by the site: %s",
                 self.model_version, about["device"], ", ".join(never) or "none",
                 ", ".join(about["zero_shot_off_in"]) or "none", ", ".join(about["excluded_by_site"]) or "none",
                 extra={"model": about})

    def describe(self) -> dict[str, Any]:
        """What an administrator needs to know about the loaded model (logged when it loads):
        among it the classes it never draws, and why."""
        s = self.model.settings
        return {
            "model_version": self.model_version,
            "device": str(self.device),
            "classes": len(self.catalog),
            "spacing_mm": list(s.spacing),
            "roi": list(s.roi_size),
            "not_found_by_calibration": [e.name for e in self.catalog if e.name in s.not_found],
            "labelled_by_no_training_set": [e.name for e in self.catalog if s.untrained(e)],
            # Organs where the calibration found the zero-shot path drawing tumours on lesion-free
            # tissue: switched off there, or its threshold raised (model.postprocess.ZeroShot).
            "zero_shot_threshold": s.zero_shot_threshold,
            "zero_shot_off_in": s.zero_shot_off(),
            "zero_shot_raised_in": s.zero_shot_raised(),
            # inference.exclude_classes, resolved: segmented, then left out of every result.
            "excluded_by_site": [e.name for e in self.catalog if e.index in self.excluded],
        }

    def segment(self, hu: np.ndarray, affine_lps: np.ndarray, want_anomaly: bool = False, progress: bool = False,
                stream_anomaly: bool = False, patient_sex: str | None = None) -> Segmentation:
        """hu (z, y, x) = (slice, row, column) with the LPS affine of (column, row, slice).

        ``stream_anomaly``: no anomaly array; ``anomaly_slabs`` gives it block by block (a
        writer that streams it never holds the float32 source-sized map). ``patient_sex``:
        DICOM PatientSex (M / F / O / empty): classes of the other sex are not drawn."""
        ijk = hu.transpose(2, 1, 0)
        result = self.model.segment(ijk, LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64),
                                    want_anomaly=want_anomaly and not stream_anomaly, progress=progress,
                                    keep_model_output=False, patient_sex=patient_sex)
        # The model lays its source-grid outputs out like its input (the (i, j, k) view of hu), so
        # these transposes are C-contiguous views: no second source-sized copy.
        labels = np.ascontiguousarray(result.labels.transpose(2, 1, 0))
        found = result.found
        if self.excluded:
            drop_labels(labels, self.excluded)
            found = {n: v for n, v in found.items() if self.catalog.by_name(n).index not in self.excluded}
        anomaly = None if result.anomaly is None else np.ascontiguousarray(result.anomaly.transpose(2, 1, 0))
        return Segmentation(labels=labels, catalog=result.catalog, anomaly=anomaly, timings=result.timings,
                            found=found, anomaly_slabs=result.anomaly_slabs if stream_anomaly else None)


def excluded_classes(model: VolumeSegmenter, names: Sequence[str]) -> frozenset[int]:
    """The 1-based label values of ``inference.exclude_classes`` for this model: catalog names
    and the groups "tumors" and "zero-shot" (tumour classes outside the checkpoint's seen
    tumours; none when the checkpoint does not record them, as it then has no zero-shot path)."""
    # model.postprocess.ZeroShot.takes_path's rule (the node may not import model.postprocess:
    # tests/packaging/test_import_rules.py).
    seen = model.settings.seen_tumors
    out: set[int] = set()
    for name in names:
        if name == "tumors":
            out |= {e.index for e in model.catalog if e.is_tumor}
        elif name == "zero-shot":
            out |= {e.index for e in model.catalog if e.is_tumor and seen is not None and e.name not in seen}
        elif name in model.catalog.names:
            out.add(model.catalog.by_name(name).index)
        else:
            raise ValueError(f"inference.exclude_classes: {name!r} is not a class of this model's catalog")
    return frozenset(out)


def drop_labels(labels: np.ndarray, values: frozenset[int], slab_voxels: int = 1 << 24) -> None:
    """Set the voxels of ``values`` to background in place, a block of slices at a time (a mask
    over the whole volume would be a source-sized array)."""
    drop = sorted(values)
    step = max(1, slab_voxels // max(1, int(np.prod(labels.shape[1:]))))
    for z0 in range(0, labels.shape[0], step):
        block = labels[z0:z0 + step]  # a view: written in place
        block[np.isin(block, drop)] = 0
