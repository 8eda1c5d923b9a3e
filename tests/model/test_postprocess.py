"""Post-processing on hand-made probability maps: organ envelopes, the gated anomaly output,
the zero-shot tumour path (spec items 10, 11) and the tumour gate."""
from __future__ import annotations

import numpy as np
import pytest

from model.catalog import Catalog, ClassEntry, load_catalog
from model.postprocess import postprocess

CAT = load_catalog()
SEEN = {"Liver Tumor", "Kidney Tumor", "Kidney Cyst"}
VOXEL_MM = (4.0, 4.0, 4.0)


def _ball(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2


def _scene():
    """A pancreas (ball) with an unclaimed lesion inside, a liver far away, fat elsewhere."""
    shape = (40, 30, 30)
    probs = np.full((len(CAT), *shape), 0.01, np.float32)
    pancreas, liver = CAT.index_of("Pancreas"), CAT.index_of("Liver")
    organ = _ball(shape, (12, 15, 15), 7)
    lesion = _ball(shape, (12, 15, 15), 3)
    probs[pancreas][organ & ~lesion] = 0.95
    probs[liver][_ball(shape, (31, 15, 15), 8)] = 0.95  # 137 ml: above the liver's 100 ml minimum
    anomaly_raw = _anomaly_raw(probs)
    return probs, anomaly_raw, lesion, organ


def _anomaly_raw(probs):
    """What the network's last channel carries: 1 - max organ probability."""
    return 1.0 - probs[[i for i, e in enumerate(CAT) if e.is_organ]].max(0)


def _run(probs, anomaly_raw, seen=SEEN, zt=0.5, entries=None, **kw):
    entries = list(entries or CAT)
    return postprocess(probs, anomaly_raw, entries, [e.threshold for e in entries], seen, zt, VOXEL_MM, 10.0, **kw)


def test_zero_shot_names_an_anomaly_inside_the_pancreas_pancreas_tumor():
    probs, anomaly_raw, lesion, organ = _scene()
    d = _run(probs, anomaly_raw)
    pt = CAT.index_of("Pancreas Tumor")
    assert d.masks[pt][lesion].all() and not d.masks[pt][~organ].any()
    # Z_c = A * Env(parent) * w_c with w = 1 for the pancreas' only tumour class.
    np.testing.assert_allclose(d.zero_shot[pt][lesion], d.anomaly[lesion], rtol=1e-6)
    # No other tumour class claims it: seen classes need their own probability, and the
    # liver's envelope does not reach the pancreas.
    others = [i for i, e in enumerate(CAT) if e.is_tumor and i != pt]
    assert not d.masks[others].any()
    # The anomaly output is gated by the organ envelope: fat far from any organ is 0.
    fat = np.ones(lesion.shape, bool)
    fat[:, :, :] = False
    fat[0:2] = True
    assert (d.anomaly[fat] == 0).all() and (d.anomaly[lesion] > 0.9).all()


def test_seen_tumor_classes_do_not_take_the_zero_shot_path():
    probs, anomaly_raw, lesion, _ = _scene()
    d = _run(probs, anomaly_raw, seen=SEEN | {"Pancreas Tumor"})
    assert not d.masks[CAT.index_of("Pancreas Tumor")].any()  # P_c is 0.01: a seen class says no
    assert CAT.index_of("Pancreas Tumor") not in d.zero_shot


def test_no_recorded_seen_list_means_no_zero_shot_path():
    probs, anomaly_raw, _, _ = _scene()
    d = _run(probs, anomaly_raw, seen=None)
    assert not d.masks[[i for i, e in enumerate(CAT) if e.is_tumor]].any()


def test_zero_shot_threshold_applies_to_the_localisation():
    probs, anomaly_raw, lesion, _ = _scene()
    anomaly_raw = np.where(lesion, 0.4, anomaly_raw).astype(np.float32)
    assert not _run(probs, anomaly_raw, zt=0.5).masks[CAT.index_of("Pancreas Tumor")].any()
    assert _run(probs, anomaly_raw, zt=0.35).masks[CAT.index_of("Pancreas Tumor")][lesion].all()


def test_a_class_added_by_name_with_a_parent_gets_the_zero_shot_path():
    extra = ClassEntry(index=len(CAT) + 1, name="Pancreatic Cyst", prompt_name="Pancreatic Cyst", kind="tumor",
                       parents=("Pancreas",))
    entries = list(CAT) + [extra]
    probs, anomaly_raw, lesion, _ = _scene()
    probs = np.concatenate([probs, np.full((1, *probs.shape[1:]), 0.001, np.float32)])
    # The text-aligned probabilities choose between the pancreas' tumour classes.
    probs[CAT.index_of("Pancreas Tumor")][lesion] = 0.002
    probs[-1][lesion] = 0.02
    d = _run(probs, anomaly_raw, entries=entries)
    assert d.masks[-1][lesion].all()
    assert not d.masks[CAT.index_of("Pancreas Tumor")][lesion].any()


def test_tumor_islands_outside_their_parent_envelope_are_dropped():
    probs, anomaly_raw, lesion, organ = _scene()
    lt = CAT.index_of("Liver Tumor")
    inside = _ball(lesion.shape, (31, 15, 15), 2)
    island = _ball(lesion.shape, (12, 15, 15), 2)  # in the pancreas, far from the liver
    probs[lt][inside | island] = 0.9
    d = _run(probs, anomaly_raw)
    assert d.masks[lt][inside].all() and not d.masks[lt][island].any()


def test_lungs_keep_two_components_and_each_voxel_goes_to_the_side_the_model_prefers():
    shape = (40, 20, 20)
    probs = np.full((len(CAT), *shape), 0.01, np.float32)
    rl, ll = CAT.index_of("Right Lung"), CAT.index_of("Left Lung")
    right, left = _ball(shape, (10, 10, 10), 6), _ball(shape, (30, 10, 10), 6)
    probs[rl][right] = 0.9
    probs[ll][left] = 0.9
    probs[ll][_ball(shape, (10, 10, 10), 2)] = 0.95  # the model prefers "left" in a core of the right lung
    probs[rl][_ball(shape, (20, 2, 2), 1)] = 0.9  # a speck
    d = _run(probs, 1.0 - probs.max(0))
    assert np.array_equal(d.masks[rl], right) and np.array_equal(d.masks[ll], left)
    # Lungs joined across the midline: split voxel by voxel.
    probs[rl][15:21, 8:12, 8:12] = 0.9
    probs[ll][20:25, 8:12, 8:12] = 0.9
    d = _run(probs, 1.0 - probs.max(0))
    assert d.masks[rl][6, 10, 10] and d.masks[ll][30, 10, 10]
    assert not (d.masks[rl] & d.masks[ll]).any()


def test_bowel_keeps_every_component_above_its_minimum_other_organs_their_largest():
    # Two colon segments (a truncated field of view, loops parted at 4 mm) both stay; a spleen
    # with a detached second blob keeps only its largest component; specks below the class's
    # minimum volume go in both cases.
    shape = (40, 20, 20)
    probs = np.full((len(CAT), *shape), 0.01, np.float32)
    colon, spleen = CAT.index_of("Colon"), CAT.index_of("Spleen")
    assert CAT[colon].components == "all" and CAT[spleen].components == "largest"
    first, second, speck = _ball(shape, (8, 10, 10), 5), _ball(shape, (30, 10, 10), 4), _ball(shape, (20, 2, 2), 0)
    probs[colon][first | second | speck] = 0.9  # 33 and 17 ml; the speck 0.06 ml, under 10 ml
    probs[spleen][first] = 0.9
    probs[spleen][second] = 0.9
    d = _run(probs, 1.0 - probs.max(0))
    assert np.array_equal(d.masks[colon], first | second)
    assert np.array_equal(d.masks[spleen], first)


def test_catalog_components_rule_is_checked(tmp_path):
    import yaml

    from model.catalog import CatalogError

    raw = {"classes": [{"name": "Thing", "kind": "organ", "color": [1, 2, 3], "components": "some"}]}
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match="components"):
        load_catalog(extra=tmp_path / "extra.yaml")


def test_catalog_index_helpers_exist():
    assert isinstance(CAT, Catalog)
    with pytest.raises(KeyError):
        CAT.index_of("No Such Organ")


def test_a_score_kept_in_its_mask_box_gates_like_the_whole_map():
    from model.postprocess import crop_score, dilate

    rng = np.random.default_rng(4)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(2, 14, 3))
        score = rng.uniform(0, 2, shape).astype(np.float32)
        mask = rng.random(shape) < rng.uniform(0.002, 0.3)
        if trial % 5 == 0:
            mask[:] = False
            mask[tuple(int(rng.integers(0, n)) for n in shape)] = True  # one voxel, maybe on a face
        if not mask.any():
            continue
        kept = crop_score(score, mask)
        assert kept.values.size <= score.size
        for by in (0, 1):
            assert np.array_equal(kept.gated(mask, by), np.where(dilate(mask, by), score, 0.0).astype(np.float32))


def test_a_tumor_does_not_take_another_organ_inside_its_parent_envelope():
    # The gall bladder sits in a notch of the liver, inside the liver's filled envelope; the
    # liver-tumour channel fires on it and on a lesion in liver tissue. The lesion is a liver
    # tumour; the gall bladder stays gall bladder (a 150-step Stage 2 labelled 259 of a
    # phantom's 265 gall-bladder voxels "Liver Tumor" before this rule).
    shape = (40, 30, 30)
    probs = np.full((len(CAT), *shape), 0.01, np.float32)
    liver, gb, lt = CAT.index_of("Liver"), CAT.index_of("Gall Bladder"), CAT.index_of("Liver Tumor")
    liver_ball = _ball(shape, (20, 15, 15), 10)
    bladder = _ball(shape, (20, 15, 19), 3)
    lesion = _ball(shape, (17, 13, 11), 2)
    probs[liver][liver_ball & ~bladder & ~lesion] = 0.95
    probs[gb][bladder] = 0.95
    probs[lt][bladder | lesion] = 0.9
    anomaly_raw = _anomaly_raw(probs)
    d = _run(probs, anomaly_raw)
    assert d.masks[gb][bladder].all()
    assert d.organ_envelopes[liver][bladder].all()  # the envelope holds it: the gate alone would not help
    assert d.masks[lt][lesion].all() and not d.masks[lt][bladder].any()
    # A parent's own mask does not stop its tumour (a kidney tumour inside the kidney's mask).
    rk, kt = CAT.index_of("Right Kidney"), CAT.index_of("Kidney Tumor")
    probs2 = np.full((len(CAT), *shape), 0.01, np.float32)
    kidney = _ball(shape, (20, 15, 15), 6)
    tumour = _ball(shape, (20, 15, 15), 2)
    probs2[rk][kidney] = 0.95
    probs2[kt][tumour] = 0.9
    d2 = _run(probs2, _anomaly_raw(probs2))
    assert d2.masks[kt][tumour].all()


def test_an_organ_s_own_zero_shot_threshold_replaces_the_global_one():
    probs, anomaly_raw, lesion, _ = _scene()
    anomaly_raw = np.where(lesion, 0.4, anomaly_raw).astype(np.float32)
    pt, pancreas = CAT.index_of("Pancreas Tumor"), CAT.index_of("Pancreas")
    assert _run(probs, anomaly_raw, zt=0.5, zero_shot_organs={pancreas: 0.35}).masks[pt][lesion].all()
    assert not _run(probs, anomaly_raw, zt=0.35, zero_shot_organs={pancreas: 0.5}).masks[pt].any()


def test_zero_shot_switched_off_in_one_organ_still_works_in_another():
    # An unclaimed lesion in the pancreas and one in the liver (Hepatic Vessel Tumor: an unseen
    # class whose parents are the liver and the hepatic vessels; the liver's seen Liver Tumor
    # has no probability there, so the text weights tie).
    probs, anomaly_raw, lesion, _ = _scene()
    liver, pancreas = CAT.index_of("Liver"), CAT.index_of("Pancreas")
    liver_lesion = _ball(lesion.shape, (31, 15, 15), 3)
    probs[liver][liver_lesion] = 0.01
    anomaly_raw = _anomaly_raw(probs)
    pt, hvt = CAT.index_of("Pancreas Tumor"), CAT.index_of("Hepatic Vessel Tumor")
    on = _run(probs, anomaly_raw)
    assert on.masks[pt][lesion].all() and on.masks[hvt][liver_lesion].all()
    off = _run(probs, anomaly_raw, zero_shot_organs={pancreas: float("inf")})
    assert not off.masks[pt].any() and pt not in off.zero_shot
    assert off.masks[hvt][liver_lesion].all()
    # With the liver off, the liver lesion goes (the other parent, the hepatic vessels, is not
    # found here) and the pancreas keeps its path.
    off_liver = _run(probs, anomaly_raw, zero_shot_organs={liver: float("inf")})
    assert not off_liver.masks[hvt].any() and off_liver.masks[pt][lesion].all()
