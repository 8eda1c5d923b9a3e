"""Where two organ masks claim the same voxels (independent sigmoids may both pass their
thresholds), ``inference.organ_overlap`` decides the label: "nested" (default) gives the voxels
to the smaller organ, "score" to the higher P_c / threshold. Measured on the demo weights: the
liver's probability inside the gall bladder is 0.998 and the gall bladder's 0.94, so under
"score" the gall bladder, though segmented, never reached the label map."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model import grid
from model.catalog import load_catalog
from model.config import InferenceConfig, ModelConfig
from model.postprocess import Decisions, crop_score
from model.segment import InferenceSettings, ModelGridOutput, VolumeSegmenter


def _segmenter(rule: str) -> VolumeSegmenter:
    seg = VolumeSegmenter.__new__(VolumeSegmenter)  # only what _labels reads: no network needed
    seg.catalog = load_catalog()
    seg.settings = InferenceSettings(orientation="RAS", spacing=(2.0, 2.0, 2.0), hu_window=(-175.0, 250.0),
                                     roi_size=(32, 32, 32), crop_margin=2, overlap=0.5, blend_mode="gaussian",
                                     sw_batch_size=1, close_mm=10.0, organ_overlap=rule)
    return seg


def _liver_with_gall_bladder():
    """Model-grid decisions: a liver block with a gall bladder inside it; the liver's score is the
    higher one everywhere, as measured on the demo weights."""
    catalog = load_catalog()
    gmap = grid.plan((48, 48, 48), np.eye(4), (2.0, 2.0, 2.0))  # 1 mm source, 2 mm model grid
    shape = gmap.model_shape
    box = tuple(slice(0, n) for n in shape)
    liver, gb = catalog.by_name("Liver").index - 1, catalog.by_name("Gall Bladder").index - 1
    masks = np.zeros((len(catalog), *shape), dtype=bool)
    masks[liver, 2:20, 2:20, 2:20] = True
    masks[gb, 8:14, 8:14, 8:14] = True
    liver_score = np.where(masks[liver], 1.8, 0.0).astype(np.float32)
    gb_score = np.where(masks[gb], 1.7, 0.0).astype(np.float32)
    scores = {liver: crop_score(liver_score, masks[liver]), gb: crop_score(gb_score, masks[gb])}
    d = Decisions(masks=masks, scores=scores, anomaly=np.zeros(shape, np.float32), envelope=masks[liver])
    output = ModelGridOutput(probs=None, anomaly_raw=None, gmap=gmap, box=box)
    return catalog, output, d, liver + 1, gb + 1


@pytest.mark.parametrize("rule, centre_label", [("nested", "Gall Bladder"), ("score", "Liver")])
def test_overlap_rule_decides_the_nested_organ(rule, centre_label):
    catalog, output, d, liver, gb = _liver_with_gall_bladder()
    labels, found = _segmenter(rule)._labels(output, d)
    assert labels[22, 22, 22] == catalog.by_name(centre_label).index  # the gall bladder's centre
    assert labels[10, 10, 10] == liver  # liver tissue away from the gall bladder stays liver
    if rule == "nested":
        inside = labels[17:27, 17:27, 17:27]  # the gall bladder's box on the 1 mm source grid
        assert (inside == gb).mean() > 0.5
        assert found["Gall Bladder"] > 0 and found["Liver"] > found["Gall Bladder"]
    else:
        assert "Gall Bladder" not in found


def test_overlap_rule_is_a_checked_model_setting():
    assert InferenceConfig().organ_overlap == "nested"
    # checkpoints written before the setting existed read the default
    assert ModelConfig.from_dict({"inference": {"overlap": 0.5}}).inference.organ_overlap == "nested"
    assert ModelConfig.from_dict({"inference": {"organ_overlap": "score"}}).inference.organ_overlap == "score"
    with pytest.raises(ValueError, match="organ_overlap"):
        InferenceConfig(organ_overlap="largest")


def _stray_inside(organ: str, organ_box: slice, stray: str, stray_box: slice) -> ModelGridOutput:
    """Model-grid probabilities on a 2 mm grid over a 1 mm source: ``organ`` over a cube
    ``organ_box`` on each axis, a smaller ``stray`` response inside it."""
    catalog = load_catalog()
    gmap = grid.plan((48, 48, 48), np.eye(4), (2.0, 2.0, 2.0))
    shape = gmap.model_shape
    probs = np.zeros((len(catalog), *shape), dtype=np.float32)
    probs[(catalog.by_name(organ).index - 1, organ_box, organ_box, organ_box)] = 0.95
    probs[(catalog.by_name(stray).index - 1, stray_box, stray_box, stray_box)] = 0.9
    return ModelGridOutput(probs=probs, anomaly_raw=np.zeros(shape, np.float32), gmap=gmap,
                           box=tuple(slice(0, n) for n in shape))


def test_a_class_the_calibration_did_not_find_is_never_drawn():
    """A channel with no signal on the validation cases (calibration "not_found") at the catalog's
    threshold only takes other organs' voxels: as the smaller mask a stray hepatic-vessel
    channel over the gall bladder wins it under "nested". Left out, the gall bladder keeps them."""
    catalog = load_catalog()
    # a smaller mask inside the gall bladder
    output = _stray_inside("Gall Bladder", slice(8, 14), "Hepatic Vessel", slice(9, 13))
    seg = _segmenter("nested")
    centre = (22, 22, 22)  # the gall bladder's centre on the 1 mm source grid
    labels, found = seg._labels(output, seg.decide(output))
    assert labels[centre] == catalog.by_name("Hepatic Vessel").index  # what the rule is for
    seg.settings = replace(seg.settings, not_found=("Hepatic Vessel",))
    assert seg.settings.threshold_of(catalog.by_name("Hepatic Vessel")) == float("inf")
    assert seg.settings.threshold_of(catalog.by_name("Gall Bladder")) == catalog.by_name("Gall Bladder").threshold
    d = seg.decide(output)
    assert not d.masks[catalog.by_name("Hepatic Vessel").index - 1].any()
    labels, found = seg._labels(output, d)
    assert labels[centre] == catalog.by_name("Gall Bladder").index
    assert "Hepatic Vessel" not in found and found["Gall Bladder"] > 0


def test_not_found_classes_are_read_from_the_checkpoint_calibration():
    from model.checkpoint import load_checkpoint
    from training.evaluate import DEFAULT_WEIGHTS

    ck = load_checkpoint(DEFAULT_WEIGHTS, map_location="cpu")
    settings = InferenceSettings.from_checkpoint(ck)
    assert settings.not_found == tuple(ck.calibration["not_found"])
    assert "Hepatic Vessel" in settings.not_found and "Liver" not in settings.not_found


def test_an_organ_class_no_training_set_labelled_is_never_drawn():
    """The checkpoint records the classes its training sets labelled (``training.labelled``). An
    organ query outside it never learned anything: 0.6's Celiac Trunk, drawn at the catalog's
    threshold as the smaller mask, took part of a validation phantom's right kidney (here: a
    pancreas). Files that do not record it draw every class; tumour classes are never affected
    (outside the record they are zero-shot classes)."""
    catalog = load_catalog()
    # a stray response inside the pancreas (a 10 ml minimum volume: a larger cube than above)
    output = _stray_inside("Pancreas", slice(4, 20), "Celiac Trunk", slice(9, 12))
    seg = _segmenter("nested")
    inside = (20, 20, 20)  # inside the stray response on the 1 mm source grid
    labels, found = seg._labels(output, seg.decide(output))
    assert labels[inside] == catalog.by_name("Celiac Trunk").index  # not recorded: drawn
    everything_but = tuple(n for n in catalog.names if n != "Celiac Trunk" and not catalog.by_name(n).is_tumor)
    seg.settings = replace(seg.settings, labelled=everything_but)
    assert seg.settings.untrained(catalog.by_name("Celiac Trunk"))
    assert seg.settings.threshold_of(catalog.by_name("Celiac Trunk")) == float("inf")
    assert not seg.settings.untrained(catalog.by_name("Pancreas"))
    assert not seg.settings.untrained(catalog.by_name("Pancreas Tumor"))  # a tumour: the zero-shot path's
    labels, found = seg._labels(output, seg.decide(output))
    assert labels[inside] == catalog.by_name("Pancreas").index
    assert "Celiac Trunk" not in found and found["Pancreas"] > 0
