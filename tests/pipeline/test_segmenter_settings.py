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
