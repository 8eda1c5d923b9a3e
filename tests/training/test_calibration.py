"""Threshold choice of the end-of-training calibration (training/calibration.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.catalog import load_catalog
from model.segment import DEFAULT_ZERO_SHOT_THRESHOLD, InferenceSettings, VolumeSegmenter, zero_shot_organs
from training.calibration import MIN_CALIBRATION_DICE, THRESHOLD_GRID, ZERO_SHOT_FALSE_ML, Case, best_threshold, calibrate


def test_the_threshold_with_the_best_dice_wins():
    dice = np.array([0.1, 0.4, 0.7, 0.5, 0.2])
    assert best_threshold(dice) == 2


def test_ties_go_to_the_highest_threshold():
    # fewer false positives for the same overlap
    assert best_threshold(np.array([0.3, 0.6, 0.6, 0.6, 0.1])) == 3


def test_a_class_found_at_no_threshold_is_not_calibrated():
    # All-zero Dice used to pick the first (lowest) threshold, 0.2: whole kidneys became "Kidney Cyst".
    assert best_threshold(np.zeros(len(THRESHOLD_GRID))) is None
    assert best_threshold(np.zeros(0)) is None


def test_a_near_zero_best_dice_is_no_evidence():
    # the lowest threshold "wins" a Dice of 0.003 by painting more: not a calibration
    dice = np.array([0.0026, 0.001, 0.0, 0.0])
    assert best_threshold(dice) is None
    assert best_threshold(np.array([0.0, MIN_CALIBRATION_DICE, 0.05])) == 1


# ---------------------------------------------------------------- per-organ zero-shot gate
# A scene whose "network" is a lookup from CT number to class probabilities, so that the
# anomaly output (1 - the highest organ probability) is known voxel by voxel: a pancreas with a
# labelled lesion, a colon and an intestine drawn as hollow shells whose filled envelopes hold
# tissue no organ channel claims (mesentery, where dsm-small-demo-0.7 drew 46-492 ml of "Small
# Intestinal Neoplasm" per phantom). The calibration runs the node's inference path on it.
HU_WINDOW = (-200.0, 300.0)
TISSUE_HU = {"air": -1000.0, "fat": -100.0, "mesentery": -60.0, "pericolic": -30.0, "intestine": 10.0,
             "colon": 25.0, "pancreas": 40.0, "lesion": 100.0}


def _tissue_probs(catalog) -> dict[str, np.ndarray]:
    """Class probabilities per tissue (organ channels; tumour channels stay near 0)."""
    out = {}
    for tissue in TISSUE_HU:
        p = np.full(len(catalog), 0.001 if tissue in ("mesentery", "lesion") else 0.01, np.float32)
        if tissue == "pericolic":
            p[:] = 0.03  # anomaly 0.97: over 0.95, under 0.98
        if tissue == "air":
            p[:] = 0.0
        organ = {"intestine": "Intestine", "colon": "Colon", "pancreas": "Pancreas"}.get(tissue)
        if organ:
            p[catalog.names.index(organ)] = 0.95
        out[tissue] = p
    return out


class _LookupNet(torch.nn.Module):
    """Pointwise: each voxel's windowed CT number picks its tissue's probabilities."""

    def __init__(self, catalog) -> None:
        super().__init__()
        self.class_names = list(catalog.names)
        organs = np.array([e.is_organ for e in catalog])
        table = _tissue_probs(catalog)
        levels = [(v - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) for v in TISSUE_HU.values()]
        rows = [np.append(p, 1.0 - p[organs].max()) for p in table.values()]
        self.register_buffer("levels", torch.tensor(np.clip(levels, 0, 1), dtype=torch.float32))
        self.register_buffer("rows", torch.tensor(np.stack(rows), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (x[:, 0, ..., None] - self.levels).abs().argmin(-1)  # (B, X, Y, Z) tissue index
        return self.rows[k].permute(0, 4, 1, 2, 3).contiguous()


def _shell_scene(catalog):
    shape = (56, 40, 40)
    hu = np.full(shape, TISSUE_HU["air"], np.float32)
    labels = np.zeros(shape, np.uint8)
    g = np.ogrid[tuple(slice(0, n) for n in shape)]

    def ball(centre, r):
        return sum((a - c) ** 2 for a, c in zip(g, centre)) <= r ** 2

    hu[ball((28, 20, 20), 19)] = TISSUE_HU["fat"]
    for organ, tissue, inner, centre in (("Intestine", "mesentery", "intestine", (14, 20, 20)),
                                         ("Colon", "pericolic", "colon", (42, 20, 20))):
        shell = ball(centre, 8) & ~ball(centre, 5)
        hu[ball(centre, 5)] = TISSUE_HU[tissue]
        hu[shell] = TISSUE_HU[inner]
        labels[shell] = catalog.by_name(organ).index
    pancreas, lesion = ball((28, 20, 31), 5), ball((28, 20, 31), 2)
    hu[pancreas] = TISSUE_HU["pancreas"]
    hu[lesion] = TISSUE_HU["lesion"]
    labels[pancreas] = catalog.by_name("Pancreas").index
    labels[lesion] = catalog.by_name("Pancreas Tumor").index
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    return Case(name="shells", image=hu, affine=affine, classes=labels, parents=np.zeros_like(labels),
                annotated=np.ones(len(catalog), bool))


def _lookup_segmenter(catalog, seen=("Liver Tumor", "Kidney Tumor", "Kidney Cyst")) -> VolumeSegmenter:
    settings = InferenceSettings(orientation="RAS", spacing=(4.0, 4.0, 4.0), hu_window=HU_WINDOW,
                                 roi_size=(32, 32, 32), crop_margin=2, overlap=0.25, blend_mode="constant",
                                 sw_batch_size=1, close_mm=10.0, seen_tumors=seen)
    net = _LookupNet(catalog)
    net.class_names = list(catalog.names)
    return VolumeSegmenter(net, catalog, settings, "cpu", amp=False)  # type: ignore[arg-type]


def test_zero_shot_is_raised_or_switched_off_where_lesion_free_tissue_draws_tumours():
    catalog = load_catalog()
    seg = _lookup_segmenter(catalog)
    case = _shell_scene(catalog)
    before = seg.segment(case.image, case.affine)
    # At the one threshold, the path draws tumours in both shells' lesion-free interiors.
    assert before.found.get("Small Intestinal Neoplasm", 0) > 100 and before.found.get("Colon Tumor", 0) > 100
    cal = calibrate(seg, [case])
    assert cal["zero_shot_organs"]["Intestine"] is None  # anomaly 0.999: over every threshold
    assert cal["zero_shot_organs"]["Colon"] == 0.98  # anomaly 0.97: the first threshold above it
    assert "Pancreas" not in cal["zero_shot_organs"]  # its lesion is labelled: no false volume
    assert cal["zero_shot_false_ml"]["Intestine"] > ZERO_SHOT_FALSE_ML
    assert cal["zero_shot_false_ml"]["Colon"] == 0.0 and cal["zero_shot_false_ml"]["Pancreas"] == 0.0
    after = segmenter_for_calibration(seg, cal).segment(case.image, case.affine)
    assert "Small Intestinal Neoplasm" not in after.found and "Colon Tumor" not in after.found
    truth = case.classes == catalog.by_name("Pancreas Tumor").index
    assert (after.labels[truth] == catalog.by_name("Pancreas Tumor").index).mean() > 0.9  # still found
    assert segmenter_for_calibration(seg, cal).settings.zero_shot_off() == ["Intestine"]


def segmenter_for_calibration(seg: VolumeSegmenter, cal: dict) -> VolumeSegmenter:
    """The segmenter a checkpoint with this calibration block gives (InferenceSettings' reading)."""
    return seg.with_settings(thresholds=cal["thresholds"], not_found=tuple(cal["not_found"]),
                             zero_shot_threshold=cal.get("zero_shot_threshold", DEFAULT_ZERO_SHOT_THRESHOLD),
                             zero_shot_organs=zero_shot_organs(cal))


def test_calibrate_command_measures_a_weights_file_again(tmp_path):
    """``dsm-train calibrate``: same weights, a calibration block measured on the given
    validation cases (with the per-organ zero-shot sweep), the old block kept for the record."""
    from model.checkpoint import load_checkpoint
    from tests.training.training_helpers import tiny_stage2_checkpoint
    from training.cli import main

    src = tiny_stage2_checkpoint(tmp_path / "m.pt", "test-cal-0",
                                 training={"seen_tumours": ["Liver Tumor", "Kidney Tumor", "Kidney Cyst"]},
                                 calibration={"zero_shot_threshold": 0.9})
    out = tmp_path / "recal.pt"
    assert main(["calibrate", "--checkpoint", str(src), "--data", "phantom:77:1:seen:8", "--out", str(out),
                 "--version", "test-cal-1"]) == 0
    old, new = load_checkpoint(src), load_checkpoint(out)
    assert new.version == "test-cal-1" and new.calibration["cases"] == 1
    assert new.calibration["data"] == "phantom:77:1:seen:8"
    assert "zero_shot_organs" in new.calibration and new.calibration["zero_shot_false_ml_budget"] == ZERO_SHOT_FALSE_ML
    assert new.training["recalibrated_from"]["calibration"] == {"zero_shot_threshold": 0.9}
    assert new.training["recalibrated_from"]["file"] == "m.pt"  # no machine's path in a release file
    before, after = old.build_model().state_dict(), new.build_model().state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="evaluation only"):
        main(["calibrate", "--checkpoint", str(src), "--data", "real", "--out", str(tmp_path / "x.pt")])
