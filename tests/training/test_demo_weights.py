"""The bundled demonstration weights: what `make serve` loads by default must load, be the
full two-stage model the model card describes, and still segment a held-out phantom."""
from __future__ import annotations

import json

import pytest

from model.checkpoint import load_checkpoint
from training.evaluate import DEFAULT_WEIGHTS, evaluate


def test_demo_weights_are_the_documented_stage2_model():
    assert DEFAULT_WEIGHTS.stat().st_size < 25e6
    ck = load_checkpoint(DEFAULT_WEIGHTS, map_location="cpu")
    assert ck.config.stage == 2 and len(ck.class_names) == 45
    assert ck.training["seen_tumours"] == ["Kidney Cyst", "Kidney Tumor", "Liver Tumor"]
    card = (DEFAULT_WEIGHTS.parent / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# {ck.version} ") and "NOT FOR CLINICAL USE" in card


@pytest.mark.timeout(600)
def test_demo_weights_segment_a_held_out_phantom(tmp_path):
    # One phantom from the evaluation seeds of the model card (5000..5007), CPU.
    summary = evaluate(DEFAULT_WEIGHTS, "phantom:5003:1", tmp_path, device="cpu", overlays=1)
    per_class = summary["per_class"]
    assert summary["organ_dsc_mean"] > 0.8, json.dumps(per_class)[:2000]
    for organ in ("Liver", "Spleen", "Right Kidney", "Left Kidney"):
        assert per_class[organ]["dsc"] > 0.85, (organ, per_class[organ])
