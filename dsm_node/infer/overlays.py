"""Overlay previews for people without a viewer: axial, coronal and sagittal views through each
finding, masks in the catalog colours, a legend, and a "not for diagnostic use" banner."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from model.spill import copy_out

BANNER = "DSM demonstration output - NOT FOR DIAGNOSTIC USE"


def _display(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    lo, hi = level - width / 2, level + width / 2
    hu = np.asarray(hu, dtype=np.float32)  # int16 volumes: the same float32 arithmetic as before
    return np.clip((hu - lo) / (hi - lo), 0, 1)


def _rgba(labels2d: np.ndarray, colours: dict[int, tuple[int, int, int]], alpha: float) -> np.ndarray:
    out = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for value, rgb in colours.items():
        sel = labels2d == value
        if sel.any():
            out[sel, :3] = np.array(rgb, dtype=np.float32) / 255.0
            out[sel, 3] = alpha
    return out


def _views(hu: np.ndarray, labels: np.ndarray, centre: tuple[int, int, int]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, image, labels) for the three planes through ``centre`` = (z, y, x); superior up."""
    z, y, x = centre
    # copy_out: a file-backed CT (model/spill.py) is read chunk by chunk and released, so that
    # the sagittal plane, which touches every page of the file, keeps only a chunk resident
    return [
        (f"axial (slice {z + 1})", copy_out(hu[z]), labels[z]),
        (f"coronal (row {y + 1})", copy_out(hu[::-1, y, :]), labels[::-1, y, :]),
        (f"sagittal (column {x + 1})", copy_out(hu[::-1, :, x]), labels[::-1, :, x]),
    ]


def _slabs(labels: np.ndarray, voxels: int = 1 << 22):
    step = max(1, voxels // max(1, labels.shape[1] * labels.shape[2]))
    for z0 in range(0, labels.shape[0], step):
        yield z0, labels[z0:z0 + step]


def _counts(labels: np.ndarray, minlength: int) -> np.ndarray:
    """Voxels per label value, slab by slab (a whole-volume bincount makes an int64 copy)."""
    counts = np.zeros(minlength, dtype=np.int64)
    for _z0, slab in _slabs(labels):
        c = np.bincount(slab.ravel(), minlength=minlength)
        if len(c) > len(counts):
            c[:len(counts)] += counts
            counts = c
        else:
            counts[:len(c)] += c
    return counts


def _centroid(labels: np.ndarray) -> np.ndarray:
    """Mean (z, y, x) index of the labelled voxels: exact integer sums of the per-axis marginals,
    the same float64 value as ``np.argwhere(labels > 0).mean(axis=0)`` without its (N, 3) list."""
    sums = np.zeros(3, dtype=np.int64)
    n = 0
    for z0, slab in _slabs(labels):
        inside = slab > 0
        per_z, per_y, per_x = inside.sum(axis=(1, 2)), inside.sum(axis=(0, 2)), inside.sum(axis=(0, 1))
        sums += [int((np.arange(z0, z0 + len(per_z)) * per_z).sum()), int((np.arange(len(per_y)) * per_y).sum()),
                 int((np.arange(len(per_x)) * per_x).sum())]
        n += int(per_z.sum())
    return sums / n


def _order_statistic(counts: np.ndarray, k: int) -> int:
    """The k-th smallest (0-based) of the values whose histogram is ``counts``."""
    return int(np.searchsorted(np.cumsum(counts), k + 1))


def _median_voxel(labels: np.ndarray, box: tuple[slice, ...], value: int) -> tuple[int, int, int]:
    """The voxel of ``value`` nearest (L1, first in C order) to the per-axis median of its voxels.

    The same voxel as ``np.median`` over ``np.argwhere`` and an argmin over the list (the
    median may fall outside a curved structure: snap to it), from per-axis histograms and one
    slab of coordinates at a time instead of a (N, 3) int64 list of the whole class (24 bytes a
    voxel: 360 MB for a 15 M-voxel intestine)."""
    origin = np.array([b.start for b in box])
    sub = labels[box]
    hist: list[np.ndarray] = [np.zeros(n, np.int64) for n in sub.shape]
    for z0, slab in _slabs(sub):
        inside = slab == value
        hist[0][z0:z0 + len(slab)] += inside.sum(axis=(1, 2))
        hist[1] += inside.sum(axis=(0, 2))
        hist[2] += inside.sum(axis=(0, 1))
    n = int(hist[0].sum())
    centre = []
    for h in hist:  # np.median of integers: the middle one, or the mean of the two middle ones
        lo, hi = _order_statistic(h, (n - 1) // 2), _order_statistic(h, n // 2)
        centre.append(int((lo + hi) / 2.0))
    target = np.array(centre)  # box coordinates (the origin shifts every voxel alike)
    best, best_d = None, None
    for z0, slab in _slabs(sub, 1 << 20):
        zyx = np.argwhere(slab == value)
        if len(zyx) == 0:
            continue
        zyx[:, 0] += z0
        d = np.abs(zyx - target).sum(axis=1)
        i = int(d.argmin())
        if best_d is None or d[i] < best_d:  # strict: the first minimum in C order wins
            best, best_d = zyx[i], d[i]
    assert best is not None, "the class has voxels in its box"
    return tuple(int(v) for v in best + origin)  # type: ignore[return-value]


def write_overlays(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    catalog: Sequence,  # ClassEntry-like: index, name, color, kind
    out_dir: str | Path,
    title: str = "",
    max_findings: int = 12,
) -> list[Path]:
    """One PNG per finding (largest first, tumours before organs), plus an overview; returns paths.

    ``hu`` and ``labels`` are (z, y, x) on the source grid, z ascending towards the head for
    axial CT (the volume assembler's order).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = _counts(labels, max(e.index for e in catalog) + 1)
    present = [e for e in catalog if counts[e.index] > 0]
    colours = {e.index: tuple(e.color) for e in present}
    present.sort(key=lambda e: (e.kind != "tumor", -int(counts[e.index])))
    dz, dy, dx = spacing_zyx
    aspects = [dy / dx, dz / dx, dz / dy]
    paths: list[Path] = []

    def figure(centre: tuple[int, int, int], heading: str, legend: Sequence) -> Path:
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.8), dpi=100, facecolor="black")
        for ax, (name, img, lab), aspect in zip(axes, _views(hu, labels, centre), aspects):
            ax.imshow(_display(img), cmap="gray", aspect=aspect, interpolation="nearest")
            ax.imshow(_rgba(lab, colours, 0.45), aspect=aspect, interpolation="nearest")
            ax.set_title(name, color="white", fontsize=10)
            ax.axis("off")
        handles = [
            Patch(color=np.array(e.color) / 255.0, label=f"{e.name} ({counts[e.index] * dz * dy * dx / 1000:.1f} ml)")
            for e in legend
        ]
        if handles:
            fig.legend(
                handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False, labelcolor="white"
            )
        fig.suptitle(f"{heading}\n{BANNER}", color="#ff5050", fontsize=11)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.12, wspace=0.03)
        return fig

    if present:
        zc, yc, xc = (int(v) for v in _centroid(labels).round())
    else:
        zc, yc, xc = (s // 2 for s in labels.shape)
    overview_heading = f"{title} overview: {len(present)} structures" if title else f"overview: {len(present)} structures"
    fig = figure((zc, yc, xc), overview_heading, present)
    paths.append(out / "overview.png")
    fig.savefig(paths[-1], facecolor="black")
    plt.close(fig)
    boxes = ndimage.find_objects(labels)
    for rank, entry in enumerate(present[:max_findings], start=1):
        # Within the class's bounding box: the same voxels in the same (C) order as over the
        # whole volume, without a volume-sized mask and coordinate list per class.
        nearest = _median_voxel(labels, boxes[entry.index - 1], entry.index)
        fig = figure(nearest, f"{title} {entry.name}".strip(), [entry])
        name = "".join(c if c.isalnum() else "_" for c in entry.name.lower())
        paths.append(out / f"{rank:02d}_{name}.png")
        fig.savefig(paths[-1], facecolor="black")
        plt.close(fig)
    return paths
