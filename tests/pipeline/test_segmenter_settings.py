"""The node's inference settings reach the segmenter (device, CPU threads) and bad values are
refused with the key named."""
from __future__ import annotations

import pytest
import torch

from dsm_node.infer.segmenter import segmenter_from_settings
from dsm_node.settings import ConfigError, load_settings


def test_cpu_threads_setting_is_applied(tiny_checkpoint, tmp_path):
    before = torch.get_num_threads()
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path), "inference.checkpoint": str(tiny_checkpoint),
                                        "inference.device": "cpu", "inference.cpu_threads": 1})
    try:
        seg = segmenter_from_settings(settings)
        assert torch.get_num_threads() == 1 and seg.device.type == "cpu"
    finally:
        torch.set_num_threads(before)
    # Empty (the default) leaves torch's own choice alone.
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path), "inference.checkpoint": str(tiny_checkpoint),
                                        "inference.device": "cpu"})
    segmenter_from_settings(settings)
    assert torch.get_num_threads() == before


def test_cpu_threads_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="cpu_threads"):
        load_settings(overrides={"storage.data_dir": str(tmp_path), "inference.cpu_threads": 0})


def test_the_loaded_model_and_the_classes_it_never_draws_are_logged(tmp_path, caplog):
    """An administrator sees at load which classes this model never draws and why (the
    calibration did not find them; no training set labelled them), instead of wondering why
    no SEG ever holds an adrenal gland."""
    import logging

    from model.catalog import load_catalog
    from model.checkpoint import load_checkpoint, save_checkpoint
    from training.evaluate import DEFAULT_WEIGHTS

    ck = load_checkpoint(DEFAULT_WEIGHTS, map_location="cpu")
    catalog = load_catalog()
    organs = [n for n in ck.class_names if not catalog.by_name(n).is_tumor and n != "Celiac Trunk"]
    recorded = save_checkpoint(tmp_path / "recorded.pt", ck.build_model(), ck.class_names, ck.embeddings,
                               version="test-recorded-0", prompt_names=ck.prompt_names,
                               training={**ck.training, "labelled": organs},
                               calibration={**ck.calibration, "zero_shot_organs": {"Intestine": None, "Colon": 0.98}})
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path), "inference.checkpoint": str(recorded),
                                        "inference.device": "cpu"})
    with caplog.at_level(logging.INFO, logger="dsm_node.infer"):
        seg = segmenter_from_settings(settings)
    about = seg.describe()
    assert about["labelled_by_no_training_set"] == ["Celiac Trunk"]
    assert set(ck.calibration["not_found"]) == set(about["not_found_by_calibration"])
    line = next(r for r in caplog.records if r.name == "dsm_node.infer")
    assert "test-recorded-0" in line.getMessage() and "Celiac Trunk" in line.getMessage()
    assert "Right Adrenal Gland" in line.getMessage()  # 0.6's calibration did not find it
    assert line.model == about  # type: ignore[attr-defined]  # the JSON log's field
    # Where the calibration switched the zero-shot path off, or raised its threshold.
    assert about["zero_shot_off_in"] == ["Intestine"] and about["zero_shot_raised_in"] == {"Colon": 0.98}
    assert "no zero-shot tumour drawn in: Intestine" in line.getMessage()
