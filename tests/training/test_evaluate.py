"""dsm-train eval: summary keys, sha256, report layout; aggregation on hand-made per-case data."""
from __future__ import annotations

import hashlib
import json

import pytest

from model.catalog import load_catalog
from tests.training.training_helpers import tiny_stage2_checkpoint
from training.cli import main
from training.evaluate import _summarise, markdown_report

CAT = load_catalog()
KEYS = ("organ_dsc_mean", "seen_tumor_dsc_mean", "unseen_tumor_dsc_mean", "unseen_tumor_auroc_mean",
        "unseen_tumor_fpr95_mean", "checkpoint_sha256")


def test_summary_aggregation_known_values():
    per_case = [
        {"dsc": {"Liver": 0.9, "Spleen": 0.7, "Liver Tumor": 0.5, "Pancreas Tumor": 0.1},
         "auroc": {"Liver Tumor": 0.8, "Pancreas Tumor": 0.9}, "fpr95": {"Liver Tumor": 0.4, "Pancreas Tumor": 0.2}},
        {"dsc": {"Liver": 0.7, "Colon Tumor": 0.3}, "auroc": {"Colon Tumor": 0.7}, "fpr95": {"Colon Tumor": 0.6},
         "auroc_pc": {"Colon Tumor": 0.65}},
    ]
    s = _summarise(per_case, CAT, seen={"Liver Tumor"})
    assert s["organ_dsc_mean"] == pytest.approx((0.8 + 0.7) / 2)  # class means first, then over classes
    assert s["seen_tumor_dsc_mean"] == pytest.approx(0.5)
    assert s["unseen_tumor_dsc_mean"] == pytest.approx(0.2)
    assert s["unseen_tumor_auroc_mean"] == pytest.approx(0.8)
    assert s["unseen_tumor_fpr95_mean"] == pytest.approx(0.4)
    assert s["per_class"]["Liver"]["cases"] == 2 and s["per_class"]["Pancreas Tumor"]["seen"] is False
    # The P_c score is averaged over the cases that have it (only case 2 here).
    assert s["unseen_tumor_auroc_pc_mean"] == pytest.approx(0.65) and s["seen_tumor_auroc_pc_mean"] is None
    none = _summarise([{"dsc": {"Liver": 1.0}, "auroc": {}, "fpr95": {}}], CAT, set())
    assert none["unseen_tumor_auroc_mean"] is None and none["seen_tumor_dsc_mean"] is None


def test_eval_cli_on_phantoms(tmp_path):
    ckpt = tiny_stage2_checkpoint(tmp_path / "m.pt", "test-eval",
                                  training={"seen_tumours": ["Liver Tumor", "Kidney Tumor", "Kidney Cyst"]})
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "phantom:77:1:all:8", "--out", str(out),
                 "--overlays", "1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(KEYS) <= set(s)
    assert s["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert s["n_cases"] == 1 and "dilated by 10 mm" in s["ood_region"]
    assert "1 of 1 cases of known sex" in s["masks"]  # a phantom knows its sex (catalog 'sex' rule)
    assert 0.0 <= s["organ_dsc_mean"] <= 1.0
    for k in KEYS[1:5]:
        assert s[k] is None or 0.0 <= s[k] <= 1.0
    per_case = json.loads((out / "per_case.json").read_text())
    assert per_case[0]["dsc"] and "Liver" in per_case[0]["dsc"]
    # Both tumour scores are measured in the same regions.
    assert per_case[0]["auroc"] and per_case[0]["auroc_pc"].keys() == per_case[0]["auroc"].keys()
    report = (out / "report.md").read_text()
    assert "Table 2" in report and "Table 3" in report and "Liver" in report.split("Table 3")[0]
    assert len(list(out.glob("overlay_*.png"))) == 1
    # A phantom labels every lesion it holds: tumour volume drawn outside them is counted.
    assert "false_tumour_ml" in per_case[0] and s["false_tumor_cases"] == 1
    assert "outside every reference lesion" in report
    md = markdown_report(s)
    assert md == report


def test_false_tumour_volume_is_averaged_over_the_cases_that_label_lesions():
    per_case = [
        {"dsc": {"Liver": 0.9}, "false_tumour_ml": {"Small Intestinal Neoplasm": 40.0, "Liver Tumor": 2.0}},
        {"dsc": {"Liver": 0.8}, "false_tumour_ml": {}},  # labels lesions, drew none outside them
        {"dsc": {"Liver": 0.7}, "case": "real", "predicted_ml": {"Liver": 1500.0, "Lung Tumor": 9.3}},  # labels no lesion
    ]
    s = _summarise(per_case, CAT, seen={"Liver Tumor"})
    assert s["false_tumor_cases"] == 2
    assert s["false_tumor_ml_mean"] == pytest.approx(21.0)
    assert s["false_zero_shot_tumor_ml_mean"] == pytest.approx(20.0)
    assert s["false_tumor_ml_by_class"]["Small Intestinal Neoplasm"] == {"mean": 20.0, "max": 40.0, "cases": 1}
    assert list(s["false_tumor_ml_by_class"]) == ["Liver Tumor", "Small Intestinal Neoplasm"]  # catalog order
    # A case that labels no lesion is listed with what was drawn in it, for the reader to judge.
    assert s["tumor_drawn_ml_unlabelled_cases"] == {"real": {"Lung Tumor": 9.3}}
