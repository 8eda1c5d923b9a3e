"""End-of-training calibration and training-time checks through the node's inference path.

* ``calibrate``: per-class thresholds and the zero-shot threshold chosen on validation cases
  (never on unseen tumour types, never on the real evaluation CTs), stored in the checkpoint's
  ``calibration`` block, which ``model.segment`` reads.
* ``rejection_rate``: share of freshly painted synthetic lesions (training/exposure.py) on
  held-out cases whose mean anomaly output exceeds 0.5 — exposure works when this is high, and
  only then does an unseen-tumour figure say anything about transfer (spec, "Anomaly exposure").

Both run ``model.segment.VolumeSegmenter`` on the cases' own grids, like ``dsm-train eval``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from model.catalog import Catalog
from model.config import ModelConfig
from model.grid import resample
from model.inference import Predictor
from model.network import DSMNet
from model.postprocess import ZeroShot, decide_tumours
from model.segment import DEFAULT_ZERO_SHOT_THRESHOLD, InferenceSettings, ModelGridOutput, VolumeSegmenter, zero_shot_organs

from .exposure import ExposureConfig, paint_lesions
from .registry import Registry
from .transforms import LoadCased

THRESHOLD_GRID = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 .. 0.8
ZERO_SHOT_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3 .. 0.9
# Per-organ zero-shot thresholds: the same steps, then finer towards 1 (the anomaly output is
# 1 - the highest organ probability, so its false positives sit at 0.9-1.0).
ZERO_SHOT_ORGAN_GRID = ZERO_SHOT_GRID + (0.95, 0.98, 0.99, 0.995)
# Zero-shot tumour volume an organ may draw outside every reference lesion, ml per validation
# case, before its zero-shot threshold is raised (about a sphere of 12 mm diameter: the size of a
# small lesion a reader would go after). Chosen before measuring (docs/model.md).
ZERO_SHOT_FALSE_ML = 1.0


@dataclass
class Case:
    """One case on its own grid: HU (i, j, k), RAS affine, catalog class and parent maps."""

    name: str
    image: np.ndarray
    affine: np.ndarray
    classes: np.ndarray
    parents: np.ndarray
    annotated: np.ndarray  # (C,) bool
    sex: str | None = None  # "female" / "male" where the source says (phantoms); None: unknown


def load_cases(items: Iterable[dict], registry: Registry) -> list[Case]:
    load = LoadCased(registry)
    out = []
    for item in items:
        d = load(item)
        out.append(Case(name=str(item.get("case", d["image"].meta.get("filename_or_obj", ""))),
                        image=np.asarray(d["image"][0], dtype=np.float32),
                        affine=np.asarray(d["image"].meta["affine"], dtype=np.float64),
                        classes=np.asarray(d["label"][0]), parents=np.asarray(d["label"][1]),
                        annotated=np.asarray(d["annotated"], dtype=bool), sex=item.get("sex")))
    return out


def segmenter_for(net: DSMNet, catalog: Catalog, embeddings: torch.Tensor, model_cfg: ModelConfig,
                  seen: Sequence[str] | None, device: torch.device | str, calibration: dict | None = None,
                  ) -> VolumeSegmenter:
    """A VolumeSegmenter around a network being trained (eval mode is the caller's business)."""
    if model_cfg.stage == 1:
        names = catalog.names[: net.n_organ]
        predictor = Predictor(net, names)
    else:
        names = catalog.names
        predictor = Predictor(net, names, embeddings, seen_tumors=seen)
    channels = Catalog([catalog.by_name(n) for n in names])
    pp, inf = model_cfg.preprocessing, model_cfg.inference
    cal = calibration or {}
    settings = InferenceSettings(
        orientation="RAS", spacing=tuple(pp.spacing), hu_window=tuple(pp.hu_window),  # type: ignore[arg-type]
        roi_size=tuple(pp.roi_size), crop_margin=pp.crop_margin, overlap=inf.overlap,  # type: ignore[arg-type]
        blend_mode=inf.blend_mode, sw_batch_size=inf.sw_batch_size, close_mm=model_cfg.amvp.close_mm,
        thresholds=dict(cal.get("thresholds", {})),
        zero_shot_threshold=float(cal.get("zero_shot_threshold", DEFAULT_ZERO_SHOT_THRESHOLD)),
        zero_shot_organs=zero_shot_organs(cal),
        seen_tumors=None if seen is None else tuple(seen),
    )
    return VolumeSegmenter(predictor, channels, settings, device, amp=True)


def _to_model_grid(values: np.ndarray, output: ModelGridOutput) -> np.ndarray:
    """A source-grid label map onto the model grid box (nearest), for threshold search."""
    g = output.gmap
    oriented = torch.from_numpy(g.to_oriented(values.astype(np.int16)))[None].float()
    return resample(oriented, g.model_shape, mode="nearest")[0].numpy().astype(np.int16)[output.box]


# A best pooled Dice below this is no evidence for any threshold: between near-zero Dice values
# the lowest threshold wins by painting more. dsm-small-demo-0.4: the zero-shot path reached
# Dice 0.0026 on seen lesions at its lowest threshold 0.3, and that threshold painted unseen
# tumour classes over most of the spleen (spleen DSC 0.81 -> 0.15).
MIN_CALIBRATION_DICE = 0.1


def best_threshold(dice: np.ndarray, min_dice: float = MIN_CALIBRATION_DICE) -> int | None:
    """Index of the threshold with the highest Dice, the highest threshold among ties (fewest
    false positives); None when the best Dice is below ``min_dice`` (the class is not found).

    Without the None, every threshold ties at 0 and the lowest would win: the class would be
    painted wherever its probability passes 0.2 — the first dsm-small-demo-0.4 calibration gave
    Kidney Cyst and Liver Tumor 0.2 and labelled whole right kidneys as lesions. The caller
    then keeps the catalog's threshold.
    """
    dice = np.asarray(dice, dtype=np.float64)
    if dice.size == 0 or not dice.max() > 0.0 or dice.max() < min_dice:
        return None
    return int(dice.size - 1 - np.argmax(dice[::-1]))


def calibrate(segmenter: VolumeSegmenter, cases: Sequence[Case],
              false_ml_budget: float = ZERO_SHOT_FALSE_ML) -> dict[str, Any]:
    """The calibration block of a checkpoint, from ``cases`` in two passes through the node's
    inference path (the network runs twice per case: holding every case's class maps would cost
    C float32 volumes a case).

    1. Thresholds that maximise the pooled Dice on ``cases`` (probability >= t, before
       post-processing), for every class annotated and present in at least one case.
    2. With those thresholds (the organ masks and envelopes the node will draw): the zero-shot
       threshold that maximises the pooled Dice of A * Env(parent) >= t against the seen tumour
       classes (the anomaly output on seen lesions, spec item 11); then, organ by organ, the
       zero-shot tumour volume drawn in that organ's envelope outside every reference lesion,
       in cases whose dataset labels tumours (a set that labels none may hold unlabelled
       lesions). Where it exceeds ``false_ml_budget`` ml per case (mean over the cases where the
       organ is found), that organ's zero-shot threshold is raised along ZERO_SHOT_ORGAN_GRID
       until it does not, or the path is switched off there (``zero_shot_organs``: null).
    """
    names = segmenter.catalog.names
    grid = np.asarray(THRESHOLD_GRID, dtype=np.float32)
    inter = np.zeros((len(names), len(grid)))
    total = np.zeros((len(names), len(grid)))
    present = np.zeros(len(names), dtype=int)
    base = segmenter.with_settings(thresholds={}, zero_shot_threshold=0.5, zero_shot_organs={}, not_found=())
    for case in cases:
        output = base.predict(case.image, case.affine)
        gt = _to_model_grid(case.classes, output)
        for c, _name in enumerate(names):
            entry = segmenter.catalog[c]
            if entry.index - 1 >= len(case.annotated) or not case.annotated[entry.index - 1]:
                continue
            if not entry.drawn_for(case.sex):
                continue  # never drawn for this patient (model.segment: patient_sex)
            truth = gt == entry.index
            present[c] += int(truth.any())
            p = output.probs[c]
            for k, t in enumerate(grid):
                pred = p >= t
                inter[c, k] += np.logical_and(pred, truth).sum()
                total[c, k] += pred.sum() + truth.sum()
    thresholds: dict[str, float] = {}
    dice_at: dict[str, float] = {}
    no_signal: list[str] = []
    for c, name in enumerate(names):
        if present[c] == 0:
            continue
        dice = 2 * inter[c] / np.maximum(total[c], 1)
        k = best_threshold(dice)
        if k is None:
            no_signal.append(name)
            continue
        thresholds[name] = round(float(grid[k]), 3)
        dice_at[name] = round(float(dice[k]), 4)
    result: dict[str, Any] = {"thresholds": thresholds, "dice_at_threshold": dice_at, "cases": len(cases),
                              "grid": list(map(float, grid)), "not_found": no_signal}
    if segmenter.settings.seen_tumors is not None:
        calibrated = base.with_settings(thresholds=thresholds, not_found=tuple(no_signal))
        result.update(_calibrate_zero_shot(calibrated, cases, false_ml_budget))
    return result


def _calibrate_zero_shot(segmenter: VolumeSegmenter, cases: Sequence[Case], false_ml_budget: float) -> dict[str, Any]:
    """Pass 2 of ``calibrate``: the zero-shot threshold and the organs where it is raised or off."""
    catalog = list(segmenter.catalog)
    seen = set(segmenter.settings.seen_tumors or ())
    index = {e.name: i for i, e in enumerate(catalog)}
    zero_shot_classes = [i for i, e in enumerate(catalog) if e.is_tumor and e.name not in seen]
    sites = sorted({index[p] for i in zero_shot_classes for p in catalog[i].parents if p in index})
    tumour_values = [e.index for e in catalog if e.is_tumor]
    zgrid = np.asarray(ZERO_SHOT_GRID, dtype=np.float32)
    ogrid = np.asarray(ZERO_SHOT_ORGAN_GRID, dtype=np.float32)
    z_inter = np.zeros(len(zgrid))
    z_total = np.zeros(len(zgrid))
    z_lesions = 0
    false_ml = np.zeros((len(catalog), len(ogrid)))
    found_in = np.zeros(len(catalog), dtype=int)
    swept = 0
    for case in cases:
        seen_here = [e for e in catalog if e.is_tumor and e.name in seen and case.annotated[e.index - 1]]
        labels_tumours = bool(case.annotated[[v - 1 for v in tumour_values if v - 1 < len(case.annotated)]].any())
        if not seen_here and not labels_tumours:
            continue
        output = segmenter.predict(case.image, case.affine)
        gt = _to_model_grid(case.classes, output)
        d = segmenter.decide(output, case.sex)
        if seen_here:
            region = np.zeros(d.anomaly.shape, bool)
            truth = np.zeros(d.anomaly.shape, bool)
            for e in seen_here:
                truth |= gt == e.index
                for p in e.parents:
                    if p in index and index[p] in d.organ_envelopes:
                        region |= d.organ_envelopes[index[p]]
            local = d.anomaly * region
            z_lesions += int(ndimage.label(truth)[1])
            for k, t in enumerate(zgrid):
                pred = local >= t
                z_inter[k] += np.logical_and(pred, truth).sum()
                z_total[k] += pred.sum() + truth.sum()
        if labels_tumours:
            swept += 1
            lesion = np.isin(gt, tumour_values)
            t_channels = np.asarray(segmenter.channel_thresholds(case.sex), dtype=np.float32)
            voxel_ml = float(np.prod(output.gmap.model_spacing)) / 1000.0
            for o in sites:
                found_in[o] += int(o in d.organ_envelopes)
            for k, u in enumerate(ogrid):
                drawn, _, _ = decide_tumours(output.probs, d.anomaly, d.masks, d.organ_envelopes, catalog,  # type: ignore[arg-type]
                                             t_channels, ZeroShot(seen, float(u)), voxel_ml,
                                             segmenter.settings.gate_fraction)
                for o in sites:
                    if o not in d.organ_envelopes:
                        continue
                    here = np.zeros(d.anomaly.shape, bool)
                    for c in zero_shot_classes:
                        if c in drawn and catalog[o].name in catalog[c].parents:
                            here |= drawn[c]
                    false_ml[o, k] += float((here & d.organ_envelopes[o] & ~lesion).sum()) * voxel_ml
    out: dict[str, Any] = {}
    start = DEFAULT_ZERO_SHOT_THRESHOLD
    if z_lesions:
        zdice = 2 * z_inter / np.maximum(z_total, 1)
        k = best_threshold(zdice)
        if k is None:
            # The anomaly output finds no seen lesion at any threshold: the zero-shot path has
            # shown nothing, so it gets the most conservative threshold of the grid.
            k = len(zgrid) - 1
        start = float(zgrid[k])
        out.update({"zero_shot_threshold": round(start, 3), "zero_shot_dice_on_seen": round(float(zdice[k]), 4),
                    "zero_shot_seen_lesions": z_lesions})
    organs: dict[str, float | None] = {}
    measured: dict[str, float] = {}
    candidates = [k for k, u in enumerate(ogrid) if u >= start - 1e-6]
    for o in sites:
        if not found_in[o]:
            continue
        per_case = false_ml[o] / found_in[o]
        ok = [k for k in candidates if per_case[k] <= false_ml_budget]
        name = catalog[o].name
        if not ok:
            organs[name] = None
            measured[name] = round(float(per_case[candidates[-1]]), 2) if candidates else float("nan")
            continue
        measured[name] = round(float(per_case[ok[0]]), 2)
        if ogrid[ok[0]] > start + 1e-6:
            organs[name] = round(float(ogrid[ok[0]]), 3)
    if swept:
        out.update({"zero_shot_organs": organs, "zero_shot_false_ml": measured,
                    "zero_shot_false_ml_budget": false_ml_budget, "zero_shot_false_ml_cases": swept})
    return out


def rejection_rate(segmenter: VolumeSegmenter, cases: Sequence[Case], cfg: ExposureConfig, seed: int) -> dict[str, Any]:
    """Paint fresh synthetic lesions (seed distinct from training) into each case and report the
    share whose mean anomaly output exceeds 0.5, overall and per host organ."""
    organs = [e.index for e in segmenter.catalog if e.is_organ]
    cfg = replace(cfg, enabled=True)
    hit = total = 0
    per_host: dict[str, list[int]] = {}
    names = {e.index: e.name for e in segmenter.catalog}
    for i, case in enumerate(cases):
        rng = np.random.default_rng([seed, i, 0x5EED])
        spacing = np.sqrt((case.affine[:3, :3] ** 2).sum(axis=0))
        image, host, _ = paint_lesions(case.image, case.classes, spacing, organs, rng, cfg)
        if not host.any():
            continue
        result = segmenter.segment(image, case.affine, want_anomaly=True, patient_sex=case.sex)
        lab, n = ndimage.label(host > 0)
        if not n:
            continue
        mean_a = ndimage.mean(result.anomaly, lab, index=np.arange(1, n + 1))
        host_of = ndimage.maximum(host, lab, index=np.arange(1, n + 1))
        for m, h in zip(np.atleast_1d(mean_a), np.atleast_1d(host_of)):
            ok = int(m > 0.5)
            hit += ok
            total += 1
            per_host.setdefault(names.get(int(h), str(int(h))), [0, 0])
            per_host[names.get(int(h), str(int(h)))][0] += ok
            per_host[names.get(int(h), str(int(h)))][1] += 1
    return {"rate": hit / total if total else float("nan"), "lesions": total,
            "per_host": {k: round(v[0] / v[1], 3) for k, v in sorted(per_host.items())}}
