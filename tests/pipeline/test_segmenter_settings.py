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


def test_unknown_excluded_classes_are_refused_with_the_valid_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"exclude_classes: unknown \['Livre'\].*zero-shot"):
        load_settings(overrides={"storage.data_dir": str(tmp_path), "inference.exclude_classes": ["Livre"]})
    ok = load_settings(overrides={"storage.data_dir": str(tmp_path),
                                  "inference.exclude_classes": ["zero-shot", "Liver Tumor"]})
    assert ok.inference.exclude_classes == ["zero-shot", "Liver Tumor"]


def test_drop_labels_clears_only_the_excluded_values_across_blocks():
    import numpy as np

    from dsm_node.infer.segmenter import drop_labels

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 46, size=(7, 5, 4)).astype(np.uint8)
    before = labels.copy()
    drop_labels(labels, frozenset({3, 45}), slab_voxels=40)  # two slices a block: 4 blocks
    assert not np.isin(labels, [3, 45]).any()
    kept = ~np.isin(before, [3, 45])
    assert (labels[kept] == before[kept]).all() and (labels[~kept] == 0).all()


def test_excluded_classes_are_segmented_then_left_out(tmp_path, caplog):
    """A site that reads in the model card that the zero-shot tumours are not usable sets
    ``exclude_classes: [zero-shot]``: the segmenter still runs every class (an organ's tumours
    still come out when the organ itself is excluded) and leaves those classes out of the labels
    every result is made from."""
    import logging

    import numpy as np

    from model.catalog import load_catalog
    from model.checkpoint import load_checkpoint
    from training.evaluate import DEFAULT_WEIGHTS
    from training.phantoms import make_phantom

    seen = set(load_checkpoint(DEFAULT_WEIGHTS, map_location="cpu").seen_tumors or ())
    catalog = load_catalog()
    zero_shot = {e.name for e in catalog if e.is_tumor and e.name not in seen}
    assert seen and zero_shot
    base = {"storage.data_dir": str(tmp_path), "inference.device": "cpu"}
    plain = segmenter_from_settings(load_settings(overrides=base))
    with caplog.at_level(logging.INFO, logger="dsm_node.infer"):
        site = segmenter_from_settings(load_settings(overrides={**base, "inference.exclude_classes": ["zero-shot", "Liver"]}))
    assert set(site.describe()["excluded_by_site"]) == zero_shot | {"Liver"}
    assert "excluded by the site: " in caplog.records[-1].getMessage()

    image, _label, affine = make_phantom(3, shape=(48, 40, 30), spacing=(6.0, 6.0, 6.0))
    hu = np.ascontiguousarray(image.transpose(2, 1, 0))  # (z, y, x) as the node holds it
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    a = plain.segment(hu, lps)
    b = site.segment(hu, lps)
    liver = catalog.by_name("Liver").index
    assert (a.labels == liver).sum() > 1000, "the demo weights find this phantom's liver"
    gone = [catalog.by_name(n).index for n in zero_shot | {"Liver"}]
    assert not np.isin(b.labels, gone).any() and "Liver" not in b.found
    same = ~np.isin(a.labels, gone)
    assert (b.labels[same] == a.labels[same]).all() and (b.labels[~same] == 0).all()
    assert {n: v for n, v in a.found.items() if n not in zero_shot | {"Liver"}} == b.found
