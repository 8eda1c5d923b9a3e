"""Overlay previews for people without a viewer: axial, coronal and sagittal views through each
finding, masks in the catalog colours, a legend, and a "not for diagnostic use" banner."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

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
    return [
        (f"axial (slice {z + 1})", hu[z], labels[z]),
        (f"coronal (row {y + 1})", hu[::-1, y, :], labels[::-1, y, :]),
        (f"sagittal (column {x + 1})", hu[::-1, :, x], labels[::-1, :, x]),
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
        box = boxes[entry.index - 1]
        voxels = np.argwhere(labels[box] == entry.index) + np.array([b.start for b in box])
        centre = tuple(int(v) for v in np.median(voxels, axis=0))
        # The median may fall outside a curved structure: snap to the nearest voxel of it.
        nearest = voxels[np.abs(voxels - np.array(centre)).sum(axis=1).argmin()]
        fig = figure(tuple(int(v) for v in nearest), f"{title} {entry.name}".strip(), [entry])
        name = "".join(c if c.isalnum() else "_" for c in entry.name.lower())
        paths.append(out / f"{rank:02d}_{name}.png")
        fig.savefig(paths[-1], facecolor="black")
        plt.close(fig)
    return paths
