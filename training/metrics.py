"""Segmentation and OOD metrics: Dice, voxel AUROC, FPR at 95 % TPR.

Works on numpy arrays or torch tensors (converted to numpy); no sklearn dependency.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def dice_score(pred: Any, truth: Any) -> float:
    """DSC of two binary masks; NaN when both are empty (undefined, excluded from means)."""
    p, t = _np(pred).astype(bool), _np(truth).astype(bool)
    denom = p.sum() + t.sum()
    if denom == 0:
        return float("nan")
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with cumulative TP and FP counts at each."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.nonzero(np.diff(s))[0]
    ends = np.r_[distinct, len(s) - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    return s[ends], tp, fp


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    s, y = _np(scores).ravel().astype(np.float64), _np(labels).ravel().astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    _, tp, fp = _ranked(s, y)
    tpr = np.r_[0.0, tp / npos]
    fpr = np.r_[0.0, fp / nneg]
    return float(np.trapezoid(tpr, fpr))


def fpr_at_tpr(scores: Any, labels: Any, tpr_level: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose TPR reaches tpr_level (FPR95)."""
    s, y = _np(scores).ravel().astype(np.float64), _np(labels).ravel().astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    _, tp, fp = _ranked(s, y)
    k = int(np.searchsorted(tp / npos, tpr_level - 1e-12, side="left"))
    return float(fp[min(k, len(fp) - 1)] / nneg)


def nanmean(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and not np.isnan(x)]
    return float(np.mean(v)) if v else None
