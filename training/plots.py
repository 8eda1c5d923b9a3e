"""PNG figures: training curves and CT overlays (matplotlib, Agg backend)."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(csv_path: Path, out: Path) -> Path | None:
    """Loss terms and validation Dice against optimizer step."""
    if not Path(csv_path).exists():
        return None
    rows = list(csv.DictReader(Path(csv_path).open()))
    if not rows:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "dice", "bce", "cls", "deep"):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if pts:
            a.plot(*zip(*pts), label=key)
    a.set_xlabel("step"), a.set_ylabel("training loss"), a.set_yscale("log"), a.legend(), a.grid(alpha=0.3)
    pts = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice") not in (None, "", "nan")]
    if pts:
        b.plot(*zip(*pts), marker="o")
    b.set_xlabel("step"), b.set_ylabel("validation Dice (mean over classes)"), b.set_ylim(0, 1), b.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, colors: Sequence[Sequence[int]],
                 out: Path, title: str = "", anomaly: np.ndarray | None = None) -> Path:
    """Axial slice through the most labelled slice: CT, ground truth, prediction (and anomaly).

    image (X, Y, Z) in [0, 1]; truth/pred (X, Y, Z) int class maps (1-based, 0 = background),
    RAS arrays shown in radiological convention (patient right on the image left).
    """
    plt = _plt()
    k = int(np.argmax((truth > 0).sum(axis=(0, 1)))) if truth.any() else image.shape[2] // 2
    lut = np.zeros((max(len(colors), int(max(truth.max(), pred.max()))) + 1, 4))
    for i, c in enumerate(colors, start=1):
        lut[i] = (*[v / 255 for v in c], 0.55)

    def show(ax, lab, name):
        # RAS array: axis 0 runs to the patient's right, axis 1 anterior -> flip both for display.
        ax.imshow(np.flipud(np.fliplr(image[:, :, k].T)), cmap="gray", vmin=0, vmax=1)
        if lab is not None:
            ax.imshow(np.flipud(np.fliplr(lut[lab[:, :, k].T])), interpolation="nearest")
        ax.set_title(name), ax.axis("off")

    n = 4 if anomaly is not None else 3
    fig, axs = plt.subplots(1, n, figsize=(4 * n, 4.2))
    show(axs[0], None, "CT")
    show(axs[1], truth, "ground truth")
    show(axs[2], pred, "prediction")
    if anomaly is not None:
        axs[3].imshow(np.flipud(np.fliplr(anomaly[:, :, k].T)), cmap="magma", vmin=0, vmax=1)
        axs[3].set_title("anomaly score"), axs[3].axis("off")
    fig.suptitle(f"{title} (axial slice {k})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
