"""Post-processing on the model grid (DSM spec, "Inference", items 10 and 11).

From class probabilities and the raw anomaly channel to final per-class masks:

* organs: probability >= threshold, largest connected component (lungs: the two largest
  components of both lungs together, each to the side most of its voxels prefer, voxel by
  voxel where a component holds both; classes whose catalog entry says ``components: all``,
  the bowel: every component), components below the class's minimum volume dropped;
* organ envelopes: each organ mask closed with a ball of ``close_mm`` and hole-filled; the
  anomaly output is 1 - max organ probability inside their union, 0 outside;
* tumours: a class trained with labels ("seen") is its probability P_c >= threshold; any other
  tumour class (no trained query of its own meaning, or added by name) also gets the zero-shot
  path Z_c = A * Env(parent) * w_c with w_c = P_c / (sum of P over the tumour classes sharing a
  parent), and a voxel is decided for c when A * Env(parent) reaches the zero-shot threshold of
  that parent organ (one calibrated threshold, raised or switched off organ by organ where it
  drew tumours on lesion-free validation tissue: ZeroShot) and c has the largest w among those
  classes (the spec's Z_c thresholded after dividing by the winner's w, so that two unseen
  siblings with similar text probabilities do not halve each other's evidence); a tumour
  component is kept when at least ``gate_fraction`` of it lies in its parent organ's envelope
  (lesions may reach outside their organ, islands elsewhere go); a tumour never takes the
  voxels of a kept organ that is not one of its parents (the gall bladder inside the filled
  liver envelope stays gall bladder).

Every decision is returned as a score map normalised so that 1.0 is the class's threshold: the
way to the source grid upsamples gated scores and thresholds them at 1.0 (smooth edges, same
decisions).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .catalog import ClassEntry
from .envelope import ball_radius_vox, bbox, envelope_np

_STRUCT = ndimage.generate_binary_structure(3, 1)
LUNGS = ("Right Lung", "Left Lung")


def largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """The k largest 6-connected components of a mask."""
    labels, n = ndimage.label(mask, structure=_STRUCT)
    if n <= k:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.zeros(len(sizes), bool)
    keep[np.argsort(sizes)[::-1][:k]] = True
    keep[0] = False
    return keep[labels]


def drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_STRUCT)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def keep_inside(mask: np.ndarray, region: np.ndarray, fraction: float) -> np.ndarray:
    """Components of ``mask`` with at least ``fraction`` of their voxels inside ``region``."""
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_STRUCT)
    total = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels[region].ravel(), minlength=n + 1)
    keep = inside >= fraction * np.maximum(total, 1)
    keep[0] = False
    return keep[labels]


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    if voxels <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_STRUCT, iterations=voxels)


@dataclass(frozen=True)
class Score:
    """A kept class's score (1.0 = threshold) where it can matter: the box of its mask grown by
    one voxel, which holds the one-voxel dilation that gates it on the way to the source grid.
    Outside the box the gated score is 0 whatever the score is; keeping only the box saves a
    model-grid float32 map per class (7 MB each at 600 slices of a 0.78 x 0.78 x 1.5 mm CT)."""

    box: tuple[slice, slice, slice]
    values: np.ndarray  # float32, the score inside ``box``

    def gated(self, mask: np.ndarray, dilated_by: int = 1) -> np.ndarray:
        """The score where ``mask`` dilated by ``dilated_by`` (0 or 1) is set, 0 elsewhere, on the
        whole grid of ``mask`` (float32): the same array as ``np.where(dilate(mask, 1), score,
        0)`` on the uncropped score, as the mask and its one-voxel dilation lie inside the box."""
        if dilated_by > 1:
            raise ValueError("a Score keeps the mask grown by one voxel only")
        out = np.zeros(mask.shape, dtype=np.float32)
        out[self.box] = np.where(dilate(mask[self.box], dilated_by), self.values, 0.0)
        return out


def crop_score(score: np.ndarray, mask: np.ndarray) -> Score:
    """``score`` kept in the box of ``mask`` grown by one voxel (see :class:`Score`)."""
    box = bbox(mask, [1] * mask.ndim)  # kept classes only: the mask is never empty
    return Score(box, np.ascontiguousarray(score[box], dtype=np.float32))  # type: ignore[arg-type]


@dataclass
class Decisions:
    """Post-processing outcome on the model grid."""

    masks: np.ndarray  # (C, X, Y, Z) bool, final per-class masks
    scores: dict[int, Score]  # channel -> its score, 1.0 = threshold, in its mask's box (kept classes only)
    anomaly: np.ndarray  # (X, Y, Z) float32: 1 - max organ probability inside the organ envelope
    envelope: np.ndarray  # (X, Y, Z) bool: union of the organ envelopes
    organ_envelopes: dict[int, np.ndarray] = field(default_factory=dict)  # organ channel -> envelope
    zero_shot: dict[int, np.ndarray] = field(default_factory=dict)  # channel -> Z_c (zero-shot classes)


def postprocess(
    probs: np.ndarray,
    anomaly_raw: np.ndarray,
    entries: Sequence[ClassEntry],
    thresholds: Sequence[float],
    seen: set[str] | None,
    zero_shot_threshold: float,
    voxel_mm: Sequence[float],
    close_mm: float,
    gate_fraction: float = 0.5,
    zero_shot_organs: Mapping[int, float] | None = None,
) -> Decisions:
    """Decide every class on the model grid.

    probs (C, X, Y, Z) class probabilities P_c in the order of ``entries``; anomaly_raw
    (X, Y, Z) = 1 - max over organ queries of sigmoid(M_q); thresholds per channel; ``seen``:
    names of tumour classes trained with labels (None: every tumour class is treated as seen,
    i.e. no zero-shot path — for checkpoints that do not record it); ``zero_shot_organs``:
    organ channel -> the zero-shot threshold inside that organ's envelope, in place of
    ``zero_shot_threshold`` (infinite: no zero-shot tumour in that organ; see ZeroShot).
    """
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    t = np.asarray(thresholds, dtype=np.float32)
    masks, organ_env, envelope = decide_organs(probs, entries, t, voxel_mm, close_mm)
    scores: dict[int, Score] = {}
    for i in organ_env:
        scores[i] = crop_score(probs[i] / t[i], masks[i])
    anomaly = np.where(envelope, anomaly_raw, 0.0).astype(np.float32)
    zero_shot = ZeroShot(seen, zero_shot_threshold, dict(zero_shot_organs or {}))
    tumours, tumour_scores, zero = decide_tumours(probs, anomaly, masks, organ_env, entries, t, zero_shot,
                                                  voxel_ml, gate_fraction)
    for c, m in tumours.items():
        masks[c] = m
    scores.update(tumour_scores)
    return Decisions(masks=masks, scores=scores, anomaly=anomaly, envelope=envelope, organ_envelopes=organ_env,
                     zero_shot=zero)


def decide_organs(probs: np.ndarray, entries: Sequence[ClassEntry], t: np.ndarray, voxel_mm: Sequence[float],
                  close_mm: float) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """Organ masks (C, X, Y, Z) with the tumour channels empty, each found organ's envelope
    (organ channel -> mask) and their union."""
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    radius = ball_radius_vox(close_mm, voxel_mm)
    index = {e.name: i for i, e in enumerate(entries)}
    masks = np.zeros(probs.shape, dtype=bool)
    organ_ix = [i for i, e in enumerate(entries) if e.is_organ]
    for i in organ_ix:
        masks[i] = probs[i] >= t[i]
    lungs = [index[n] for n in LUNGS if n in index]
    if len(lungs) == 2:
        r, l = lungs
        both = largest_components(masks[r] | masks[l], 2)
        prefers_right = probs[r] / t[r] >= probs[l] / t[l]
        right = np.zeros_like(both)
        comps, n = ndimage.label(both, structure=_STRUCT)
        for k in range(1, n + 1):
            comp = comps == k
            share = float(prefers_right[comp].mean())
            # A lung is one component: a clear majority decides its side as a whole; a component
            # holding both lungs (joined across the mediastinum) is split voxel by voxel.
            right |= comp if share >= 0.9 else (comp & prefers_right if share > 0.1 else False)
        masks[r], masks[l] = right, both & ~right
    for i in organ_ix:
        if masks[i].any():
            kept = largest_components(masks[i], 1) if entries[i].components == "largest" else masks[i]
            masks[i] = drop_small(kept, int(np.ceil(entries[i].min_volume_ml / voxel_ml)))
    organ_env: dict[int, np.ndarray] = {}
    envelope = np.zeros(probs.shape[1:], dtype=bool)
    for i in organ_ix:
        if masks[i].any():
            organ_env[i] = envelope_np(masks[i], radius)
            envelope |= organ_env[i]
    return masks, organ_env, envelope


@dataclass(frozen=True)
class ZeroShot:
    """Which tumour classes take the zero-shot path, and its threshold in each parent organ.

    ``seen``: tumour classes trained with labels (None: all, no zero-shot path). ``organs``:
    organ channel -> threshold inside that organ's envelope where the calibration raised it above
    ``threshold`` (infinite: off). The anomaly output is high wherever a weak organ channel
    leaves its own tissue uncovered: dsm-small-demo-0.7 drew a "Small Intestinal Neoplasm" of
    46-492 ml in the bowel of every held-out phantom at the one threshold 0.9 (docs/model.md);
    training.calibration measures, organ by organ, the zero-shot volume drawn on lesion-free
    validation tissue and raises or switches off the path where it is too large.
    """

    seen: set[str] | None
    threshold: float
    organs: dict[int, float] = field(default_factory=dict)

    def takes_path(self, entry: ClassEntry) -> bool:
        return self.seen is not None and not entry.is_organ and entry.name not in self.seen

    def threshold_in(self, organ: int) -> float:
        return self.organs.get(organ, self.threshold)


def decide_tumours(probs: np.ndarray, anomaly: np.ndarray, masks: np.ndarray, organ_env: dict[int, np.ndarray],
                   entries: Sequence[ClassEntry], t: np.ndarray, zero_shot: ZeroShot, voxel_ml: float,
                   gate_fraction: float) -> tuple[dict[int, np.ndarray], dict[int, Score], dict[int, np.ndarray]]:
    """Tumour masks (channel -> mask, kept classes only), their scores and the zero-shot maps Z_c,
    from the organ masks and envelopes of ``decide_organs`` and the gated anomaly output."""
    index = {e.name: i for i, e in enumerate(entries)}
    organ_ix = [i for i, e in enumerate(entries) if e.is_organ]
    tumor_ix = [i for i, e in enumerate(entries) if not e.is_organ]
    parents_of = {i: [index[p] for p in entries[i].parents if p in index] for i in tumor_ix}
    out: dict[int, np.ndarray] = {}
    scores: dict[int, Score] = {}
    zero: dict[int, np.ndarray] = {}
    # A tumour does not take the voxels of a kept organ other than its parents: the filled liver
    # envelope holds the gall bladder, and a liver-tumour channel that fires on bile took 259 of
    # a phantom's 265 gall-bladder voxels (docs/training.md). Keyed by the parent set.
    others: dict[tuple[int, ...], np.ndarray] = {}
    for c in tumor_ix:
        parents = parents_of[c]
        region = np.zeros(anomaly.shape, dtype=bool)
        for p in parents:
            if p in organ_env:
                region |= organ_env[p]
        if not region.any():
            continue  # no parent organ found: no tumour of this class
        score = probs[c] / t[c]
        if zero_shot.takes_path(entries[c]):
            siblings = [s for s in tumor_ix if set(parents_of[s]) & set(parents)]
            # Accumulated channel by channel: the same float32 values as probs[siblings].sum(0)
            # and .max(0) (a reduction over the first axis adds in that order), without the
            # (siblings, X, Y, Z) copy that fancy indexing makes.
            total = probs[siblings[0]].copy()
            top_p = probs[siblings[0]].copy()
            for sib in siblings[1:]:
                total += probs[sib]
                np.maximum(top_p, probs[sib], out=top_p)
            flat = total <= 1e-6
            w = np.where(flat, 1.0 / len(siblings), probs[c] / np.maximum(total, 1e-6))
            w_max = np.where(flat, 1.0 / len(siblings), top_p / np.maximum(total, 1e-6))
            del total, top_p
            # A / threshold inside each parent's envelope where the path is on there.
            local = np.zeros(anomaly.shape, dtype=np.float32)
            on = np.zeros(anomaly.shape, dtype=bool)
            for p in parents:
                tp = zero_shot.threshold_in(p)
                if p in organ_env and np.isfinite(tp):
                    np.maximum(local, np.where(organ_env[p], anomaly / max(tp, 1e-6), 0.0), out=local)
                    on |= organ_env[p]
            if on.any():
                zero[c] = (anomaly * on * w).astype(np.float32)
                top = w >= w_max - 1e-6
                score = np.maximum(score, np.where(top, local, 0.0))
        key = tuple(sorted(parents))
        if key not in others:
            others[key] = np.zeros(anomaly.shape, dtype=bool)
            for o in organ_ix:
                if o not in parents and masks[o].any():
                    others[key] |= masks[o]
        m = keep_inside((score >= 1.0) & ~others[key], region, gate_fraction)
        m = drop_small(m, int(np.ceil(entries[c].min_volume_ml / voxel_ml)))
        if m.any():
            out[c] = m
            scores[c] = crop_score(score.astype(np.float32), m)
    return out, scores, zero
