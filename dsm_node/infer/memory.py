"""How much memory one inference needs, from the series geometry alone, and the guard that
refuses a series the machine cannot hold before anything is decoded (docs/memory.md).

A job that outgrows the machine is killed by the kernel mid-way, with no reason recorded and a
retry that dies the same way. The guard turns that into a failed job whose reason says what was
needed and what was there.

The estimate (fitted to ``make bench-scale``, see docs/memory.md) is

    peak = base + source_voxels * source_bytes + model_voxels * channels * channel_bytes

* ``base``: the process with torch and the loaded model, and the fixed costs of one job;
* ``source_bytes``: what stays per voxel of the series on its own grid: the int16 HU (2; not
  counted with ``inference.spill``, which keeps them file-backed), the
  uint8 label map (1), the float32 anomaly map when it is held whole (4: ``dsm-node infer`` on a
  series whose slices are not axial; axial series stream it plane by plane),
  the result encoding's per-voxel work;
* ``channel_bytes``: per voxel of the model grid (the whole series resampled to the model
  spacing: the body box is at most that) and per output channel: the sliding window's float32
  output and its blending buffers, post-processing's masks and scores.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryModel:
    """Constants from ``make bench-scale`` on the small demo model (docs/memory.md), rounded up:
    the estimate is meant to sit above the measured peaks, not on them."""

    base_mb: float = 1300.0  # python, torch, the loaded model, the fixed part of one job
    source_bytes: float = 5.0  # int16 HU 2 + uint8 labels 1 + encoding and overlay slabs
    # with inference.spill the HU are file-backed: resident whole only while they are resampled,
    # before the model-grid arrays exist; labels 1 + the SEG's partition 1 + slabs
    spilled_source_bytes: float = 3.0
    anomaly_bytes: float = 4.0  # the float32 anomaly map held whole (dsm-node infer, non-axial series)
    channel_bytes: float = 6.0  # sliding-window output and blending, post-processing masks/scores

    def estimate_mb(self, shape: Sequence[int], spacing_mm: Sequence[float], model_spacing_mm: Sequence[float],
                    channels: int, anomaly: bool = False, spill: bool = False) -> float:
        """Peak resident memory (MiB) of segmenting a series of ``shape`` voxels of ``spacing_mm``
        (the same axis order) with a model on ``model_spacing_mm`` and ``channels`` output channels."""
        source = math.prod(int(n) for n in shape)
        # the series' extent on the model grid (axis order does not matter for the product)
        model = math.prod(n * s for n, s in zip(shape, spacing_mm)) / math.prod(model_spacing_mm)
        per_source = (self.spilled_source_bytes if spill else self.source_bytes) + (self.anomaly_bytes if anomaly else 0.0)
        return self.base_mb + (source * per_source + model * channels * self.channel_bytes) / MB


DEFAULT_MODEL = MemoryModel()


class MemoryRefused(Exception):
    """The series needs more memory than the machine (or the configured cap) allows."""


def meminfo_mb(field: str = "MemAvailable", path: str = "/proc/meminfo") -> float | None:
    """A /proc/meminfo field in MiB, None where there is no /proc (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) / 1024.0
    except OSError:
        return None
    return None


def own_rss_mb(path: str = "/proc/self/status") -> float:
    """This process's resident memory (MiB): the part of the estimate already paid."""
    return meminfo_mb("VmRSS", path) or 0.0


def check(needed_mb: float, cap_mb: float | None, what: str, *, available_mb: float | None = None,
          resident_mb: float | None = None) -> None:
    """Raise :class:`MemoryRefused` when ``needed_mb`` exceeds the cap or what the machine has
    available on top of what this process already holds."""
    if cap_mb is not None and needed_mb > cap_mb:
        raise MemoryRefused(
            f"{what} needs about {needed_mb:.0f} MB, more than inference.max_memory_mb = {cap_mb:.0f} MB")
    available = meminfo_mb() if available_mb is None else available_mb
    if available is None:
        return
    resident = own_rss_mb() if resident_mb is None else resident_mb
    more = needed_mb - resident
    if more > available:
        raise MemoryRefused(
            f"{what} needs about {needed_mb:.0f} MB ({more:.0f} MB more than this process holds) but the machine has "
            f"{available:.0f} MB available (MemAvailable): refused instead of being killed by the kernel mid-job; "
            f"free memory, or process the series on a larger machine")


def guard(cap_mb: float | None, model_spacing_mm: Sequence[float], channels: int, anomaly: bool = False,
          model: MemoryModel = DEFAULT_MODEL, spill: bool = False) -> Callable[[Sequence[int], Sequence[float]], None]:
    """A check of (shape, spacing) for one segmenter: raises :class:`MemoryRefused` with the reason."""

    def check_series(shape: Sequence[int], spacing_mm: Sequence[float]) -> None:
        needed = model.estimate_mb(shape, spacing_mm, model_spacing_mm, channels, anomaly, spill)
        dims = " x ".join(str(int(n)) for n in shape)
        check(needed, cap_mb, f"a series of {dims} voxels")

    return check_series


def segmenter_guard(settings, segmenter, anomaly: bool = False) -> Callable[[Sequence[int], Sequence[float]], None]:
    """The guard for a node's ``inference`` settings and its loaded segmenter."""
    s = segmenter.model.settings
    return guard(settings.inference.max_memory_mb, s.spacing, len(segmenter.catalog) + 1, anomaly,
                 spill=settings.inference.spill)


def spill_folder(settings: Any, default: Path) -> Path | None:
    """Where a series' HU are file-backed (model/spill.py): ``inference.spill_dir``, else
    ``default`` (the node: storage.data_dir/work; ``dsm-node infer``: its output folder); None
    with ``inference.spill`` off (in memory)."""
    inf = settings.inference
    if not inf.spill:
        return None
    return Path(inf.spill_dir) if inf.spill_dir else Path(default)
