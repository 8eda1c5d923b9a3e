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
    assert list(ck.seen_tumors or ()) == ["Kidney Cyst", "Kidney Tumor", "Liver Tumor"]  # either spelling of the key
    # trained on phantoms only: every organ class but the Celiac Trunk, which no dataset labels
    assert ck.labelled is not None and "Celiac Trunk" not in ck.labelled and "Liver" in ck.labelled
    # calibrated with the per-organ zero-shot thresholds (0.7 without them drew hundreds of ml of
    # "Small Intestinal Neoplasm" in every phantom's bowel)
    assert ck.calibration["zero_shot_organs"]["Intestine"] is None
    assert ck.calibration["zero_shot_false_ml_budget"] == 1.0
    card = (DEFAULT_WEIGHTS.parent / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# {ck.version} ") and "NOT FOR CLINICAL USE" in card


@pytest.mark.timeout(600)
def test_demo_weights_segment_a_held_out_phantom(tmp_path):
    """A guard against shipping worse weights, set a margin below what the demo weights measured
    on this phantom (0.4: spleen 0.87, liver 0.84, stomach 0.91, aorta 0.95, lungs 0.97, bladder
    0.97; 0.5: spleen 0.94, liver 0.93, stomach 0.91, aorta 0.94, lungs 0.97/0.96, bladder 0.86):
    the issue's targets (organ DSC >= 0.85) are not met by these weights (see the model card), so
    this does not assert them."""
    # One phantom from the evaluation seeds of the model card (5000..5007), CPU.
    summary = evaluate(DEFAULT_WEIGHTS, "phantom:5003:1", tmp_path, device="cpu", overlays=1)
    per_class = summary["per_class"]
    assert summary["organ_dsc_mean"] > 0.45, json.dumps(per_class)[:2000]
    for organ in ("Liver", "Spleen", "Stomach", "Aorta", "Right Lung", "Left Lung", "Bladder"):
        assert per_class[organ]["dsc"] > 0.75, (organ, per_class[organ])
    # Nothing abdominal above the diaphragm (the 0.2 weights put the liver over the heart).
    assert summary["abdominal_above_diaphragm_ml_max"] < 50
    # False zero-shot lesions on this phantom: 332 ml with 0.7, 7.4 ml with 0.7.1.
    assert summary["false_zero_shot_tumor_ml_mean"] < 25, summary["false_tumor_ml_by_class"]


@pytest.mark.timeout(900)
def test_node_infer_and_eval_give_the_same_labels(tmp_path):
    """`dsm-node infer` (the node's path) and `dsm-train eval` on the same phantom NIfTI: one
    inference path, so the same labels voxel for voxel."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from training.phantoms import make_phantom, write_nifti_pair

    image, label, affine = make_phantom(5004, spacing=4.0, tumor_types=["liver_tumor", "pancreas_tumor"],
                                        tumor_prob=1.0)
    write_nifti_pair(image, label, affine, tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz")
    (tmp_path / "list.csv").write_text("image,label,dataset\nct.nii.gz,lab.nii.gz,phantom_all\n")
    evaluate(DEFAULT_WEIGHTS, str(tmp_path / "list.csv"), tmp_path / "eval", device="cpu", overlays=0,
             save_labels=True)
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "dsm_node", "infer", str(tmp_path / "ct.nii.gz"), "--out",
                           str(tmp_path / "infer"), "--device", "cpu", "--no-overlays"],
                          capture_output=True, text=True, cwd=repo, env={**os.environ}, timeout=800)
    assert done.returncode == 0, done.stderr
    node = np.asarray(nib.load(tmp_path / "infer" / "labels.nii.gz").dataobj)
    (saved,) = (tmp_path / "eval" / "labels").glob("*.nii.gz")
    ev = np.asarray(nib.load(saved).dataobj)
    assert node.shape == ev.shape == label.shape
    assert np.array_equal(node, ev)
    assert len(np.unique(node)) > 10  # a real segmentation, not an empty one
