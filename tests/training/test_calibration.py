"""Threshold choice of the end-of-training calibration (training/calibration.py)."""
from __future__ import annotations

import numpy as np

from training.calibration import MIN_CALIBRATION_DICE, THRESHOLD_GRID, best_threshold


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
