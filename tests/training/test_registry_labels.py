"""Dataset registry: every raw value of every dataset maps to the right catalog class."""
from __future__ import annotations

import numpy as np
import pytest

from model.catalog import load_catalog
from training.labels import LabelError, map_labels, parent_map, read_raw_label
from training.registry import RegistryError, label_path_for, load_registry

CAT = load_catalog()
REG = load_registry(catalog=CAT)
PAPER_DATASETS = {"btcv", "chaos", "pancreas_ct", "ct_org", "word", "amos22", "totalsegmentator", "abdomenct1k",
                  "lits", "kits19", "kits21", "msd_liver", "msd_lung", "msd_pancreas", "msd_hepatic_vessel",
                  "msd_spleen", "msd_colon"}

# LPS-ordered grid (as DICOM-derived NIfTI often is) and a RAS-ordered one: the side of a blob
# must come from world coordinates, not from array order.
AFFINES = {
    "lps_order": np.array([[-2.0, 0, 0, 40], [0, -2.0, 0, 30], [0, 0, 3.0, -20], [0, 0, 0, 1]]),
    "ras_order": np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -30], [0, 0, 3.0, -20], [0, 0, 0, 1]]),
}


def _blob_volume(values_right_left: list[tuple[int, bool | None]], affine: np.ndarray, shape=(40, 40, 9)):
    """One 3x3x2 blob per raw value; bool = put it on the patient's right (True) / left (False)."""
    vol = np.zeros(shape, np.int32)
    xs = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]  # RAS x of each column

    def slots(right: bool):
        cols = [i for i in range(shape[0] - 3) if ((xs[i:i + 3] > 6) if right else (xs[i:i + 3] < -6)).all()]
        for k0 in range(0, shape[2] - 1, 3):
            for j0 in range(0, shape[1] - 2, 4):
                for i0 in cols[::4]:
                    yield (slice(i0, i0 + 3), slice(j0, j0 + 3), slice(k0, k0 + 2))

    free = {True: slots(True), False: slots(False)}
    where = {}
    for v, right in values_right_left:
        sl = next(free[right is not False])
        assert not vol[sl].any()
        vol[sl] = v
        where[(v, right)] = sl
    return vol, where


def test_registry_covers_the_paper_datasets():
    assert PAPER_DATASETS <= set(REG.datasets)
    assert {REG[k].role for k in ("lits", "kits19", "kits21")} == {"tumor"}
    assert {REG[k].role for k in ("msd_lung", "msd_pancreas", "msd_colon")} == {"unseen_tumor"}


@pytest.mark.parametrize("key", sorted(REG.datasets))
def test_templates_consistent(key):
    spec = REG[key]
    mapped = spec.mapped_classes()
    assert set(spec.annotated) <= mapped, "an annotated class needs a raw value"
    organs = {c for c in mapped if CAT.by_name(c).is_organ}
    assert organs <= set(spec.annotated), "every mapped organ is annotated"
    assert all(c in CAT.names for c in mapped | set(spec.annotated))
    vec = spec.annotated_vector(CAT)
    assert len(vec) == len(CAT) and sum(vec) == len(spec.annotated)
    for target in spec.value_map().values():
        if target.split:
            r, l = (CAT.by_name(c) for c in target.split)
            assert (r.laterality, l.laterality) == ("right", "left")
    if spec.layout:
        assert {"image", "label"} <= set(spec.layout)


@pytest.mark.parametrize("orientation", sorted(AFFINES))
@pytest.mark.parametrize("key", sorted(k for k in REG.datasets if not REG[k].uses_masks))
def test_every_raw_value_round_trips(key, orientation):
    spec = REG[key]
    affine = AFFINES[orientation]
    layout = []
    for v, t in sorted(spec.value_map().items()):
        if t.split:
            layout += [(v, True), (v, False)]
        else:
            layout.append((v, None))
    raw, where = _blob_volume(layout, affine)
    out = map_labels(raw, spec, CAT, affine)
    assert out.dtype == np.uint8
    for (v, right), sl in where.items():
        t = spec.value_map()[v]
        got = set(np.unique(out[sl]).tolist())
        if t.split:
            want = CAT.by_name(t.split[0] if right else t.split[1]).index
        elif t.cls:
            want = CAT.by_name(t.cls).index
        else:
            want = 0
        assert got == {want}, f"{key} raw {v} (right={right}) -> {got}, expected {want}"
    assert not out[raw == 0].any()


def test_published_values_spot_checks():
    def cls(key, v):
        t = REG[key].value_map()[v]
        return t.split or t.cls

    assert cls("btcv", 9) == "Postcava" and cls("btcv", 10) == "Portal Vein and Splenic Vein"
    assert cls("btcv", 12) == "Right Adrenal Gland" and cls("btcv", 13) == "Left Adrenal Gland"
    assert cls("word", 3) == "Left Kidney" and cls("word", 4) == "Right Kidney"
    assert cls("kits21", 1) == ("Right Kidney", "Left Kidney") and cls("kits21", 3) == "Kidney Cyst"
    assert 3 not in REG["kits19"].value_map()
    assert cls("lits", 2) == "Liver Tumor" and cls("msd_pancreas", 2) == "Pancreas Tumor"
    assert cls("msd_lung", 1) == "Lung Tumor" and cls("msd_colon", 1) == "Colon Tumor"
    assert cls("amos22", 15) is None and cls("ct_org", 5) is None
    assert cls("abdomenct1k", 2) == ("Right Kidney", "Left Kidney")


def test_phantom_values_are_catalog_indices():
    for key in ("phantom_organs", "phantom_seen", "phantom_all"):
        for v, t in REG[key].value_map().items():
            assert CAT.by_name(t.cls).index == v


def test_unknown_raw_value_is_an_error():
    raw = np.zeros((4, 4, 4), np.int32)
    raw[0, 0, 0] = 3
    with pytest.raises(LabelError, match=r"\[3\]"):
        map_labels(raw, REG["lits"], CAT, np.eye(4))


def test_component_straddling_the_midline_is_cut():
    # Without an image the midline is the centre of the field of view: x = 0 for this grid.
    affine = np.array([[2.0, 0, 0, -39], [0, 2.0, 0, -30], [0, 0, 3.0, -20], [0, 0, 0, 1]])
    raw = np.zeros((40, 30, 6), np.int32)
    raw[10:30, 10:14, 1:3] = 1  # horseshoe-like band across x = 0
    out = map_labels(raw, REG["kits19"], CAT, affine)
    xs = affine[0, 0] * np.arange(40) + affine[0, 3]
    rk, lk = CAT.by_name("Right Kidney").index, CAT.by_name("Left Kidney").index
    band = raw == 1
    right_side = np.broadcast_to((xs > 0)[:, None, None], raw.shape)
    assert set(np.unique(out[band & right_side])) == {rk}
    assert set(np.unique(out[band & ~right_side])) == {lk}


def test_midline_comes_from_the_body_in_the_image():
    # Body centred at x = +20 mm: a kidney blob at x = +10 is on the LEFT of that midline.
    affine = AFFINES["ras_order"]
    shape = (40, 30, 6)
    xs = affine[0, 0] * np.arange(40) + affine[0, 3]
    image = np.full(shape, -1000.0, np.float32)
    image[(xs > 0) & (xs < 40)] = 40.0
    raw = np.zeros(shape, np.int32)
    i = int(np.argmin(np.abs(xs - 10)))
    raw[i:i + 2, 10:12, 2:4] = 1
    out = map_labels(raw, REG["kits19"], CAT, affine, image)
    assert set(np.unique(out[raw == 1])) == {CAT.by_name("Left Kidney").index}


def test_tumor_parent_assignment():
    affine = AFFINES["lps_order"]
    shape = (40, 30, 6)
    xs = affine[0, 0] * np.arange(40) + affine[0, 3]
    classes = np.zeros(shape, np.uint8)
    right_i = int(np.argmin(np.abs(xs - 20)))
    left_i = int(np.argmin(np.abs(xs + 20)))
    kt = CAT.by_name("Kidney Tumor").index
    classes[right_i, 5, 2] = kt
    classes[left_i, 5, 2] = kt
    classes[right_i, 20, 2] = CAT.by_name("Liver Tumor").index
    classes[left_i, 20, 2] = CAT.by_name("Hepatic Vessel Tumor").index
    classes[right_i, 25, 2] = CAT.by_name("Liver").index  # organs get no parent
    par = parent_map(classes, CAT, affine)
    assert par[right_i, 5, 2] == CAT.by_name("Right Kidney").index
    assert par[left_i, 5, 2] == CAT.by_name("Left Kidney").index
    assert par[right_i, 20, 2] == CAT.by_name("Liver").index
    assert par[left_i, 20, 2] == CAT.by_name("Liver").index  # first parent of a non-lateral pair
    assert par[right_i, 25, 2] == 0
    assert (par > 0).sum() == 4


def test_totalsegmentator_masks_merge(tmp_path):
    nib = pytest.importorskip("nibabel")
    spec = REG["totalsegmentator"]
    affine = AFFINES["ras_order"]
    shape = (40, 30, 6)
    folder = tmp_path / "s0001" / "segmentations"
    folder.mkdir(parents=True)
    xs = affine[0, 0] * np.arange(40) + affine[0, 3]
    masks = {
        "liver": (slice(30, 34), slice(2, 6), slice(0, 2)),
        "lung_upper_lobe_left": (slice(2, 5), slice(2, 5), slice(3, 5)),
        "lung_lower_lobe_right": (slice(30, 33), slice(10, 13), slice(3, 5)),
        "small_bowel": (slice(18, 22), slice(18, 22), slice(0, 2)),
    }
    for stem, sl in masks.items():
        m = np.zeros(shape, np.uint8)
        m[sl] = 1
        nib.save(nib.Nifti1Image(m, affine), str(folder / f"{stem}.nii.gz"))
    raw, aff = read_raw_label(folder, spec)
    np.testing.assert_allclose(aff, affine)
    out = map_labels(raw, spec, CAT, aff)
    assert xs[30] > 0 > xs[2]  # column 30 is on the patient's right
    for stem, name in (("liver", "Liver"), ("lung_upper_lobe_left", "Left Lung"),
                       ("lung_lower_lobe_right", "Right Lung"), ("small_bowel", "Intestine")):
        assert set(np.unique(out[masks[stem]])) == {CAT.by_name(name).index}
    assert (out > 0).sum() == sum(np.prod([s.stop - s.start for s in sl]) for sl in masks.values())


def test_layout_label_templates():
    assert label_path_for("RawData/Training/img/img0007.nii.gz", REG["btcv"].layout["label"]) == \
        "RawData/Training/label/label0007.nii.gz"
    assert label_path_for("data/case_00012/imaging.nii.gz", REG["kits19"].layout["label"]) == \
        "data/case_00012/segmentation.nii.gz"
    assert label_path_for("Image/Case_00001_0000.nii.gz", REG["abdomenct1k"].layout["label"]) == "Mask/Case_00001.nii.gz"
    assert label_path_for("volume-17.nii", REG["lits"].layout["label"]) == "segmentation-17.nii"
    assert label_path_for("s0042/ct.nii.gz", REG["totalsegmentator"].layout["label"]) == "s0042/segmentations"


def test_registry_rejects_unknown_class(tmp_path):
    bad = tmp_path / "reg.yaml"
    bad.write_text("datasets:\n  x:\n    role: organ\n    labels: {1: Livr}\n    annotated: []\n")
    with pytest.raises(RegistryError, match="Livr"):
        load_registry(bad, CAT)
    bad.write_text("datasets:\n  x:\n    role: organ\n    labels: {1: Liver}\n    annotated: []\n")
    with pytest.raises(RegistryError, match="missing from 'annotated'"):
        load_registry(bad, CAT)
    bad.write_text("datasets:\n  x:\n    role: organ\n    labels: {1: {split: [Left Lung, Right Lung]}}\n"
                   "    annotated: [Left Lung, Right Lung]\n")
    with pytest.raises(RegistryError, match="right then the left"):
        load_registry(bad, CAT)
