"""check-data, make-list, dataset lists and the preprocessing pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.catalog import load_catalog
from training.checks import check_data, make_list
from training.cli import main
from training.data import epoch_plan, phantom_items, spec_items
from training.datalist import read_datalist
from training.registry import load_registry
from training.transforms import CropConfig, PipelineConfig, augment_transforms, preprocess_transforms

nib = pytest.importorskip("nibabel")
CAT = load_catalog()


def _save(path, arr, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def test_phantoms_cli_and_check_data(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantoms", "--out", str(out), "--n", "3", "--seed", "5", "--spacing", "8", "--tumours", "seen",
                 "--dataset", "phantom_seen", "--val", "1"]) == 0
    cases = read_datalist(out / "datalist.csv")
    assert [c.split for c in cases] == ["train", "train", "val"] and {c.dataset for c in cases} == {"phantom_seen"}
    assert main(["check-data", "--list", str(out / "datalist.csv")]) == 0
    assert "3 cases" in capsys.readouterr().out

    # Break things the way real folders break.
    aff = nib.load(str(cases[0].image)).affine
    lab = np.asarray(nib.load(str(cases[0].label)).dataobj).copy()
    lab[0, 0, 0] = 40  # Small Intestinal Neoplasm: not a phantom label value
    _save(cases[0].label, lab, aff)
    _save(cases[1].label, np.asarray(nib.load(str(cases[1].label)).dataobj)[:-1], aff)  # wrong shape
    shifted = aff.copy()
    shifted[0, 3] += 5.0
    _save(cases[2].label, np.asarray(nib.load(str(cases[2].label)).dataobj), shifted)  # wrong affine
    (out / "imagesTr" / "phantom_00099.nii.gz").write_bytes((out / "imagesTr" / "phantom_00005.nii.gz").read_bytes())
    with (out / "datalist.csv").open("a") as fh:
        fh.write("imagesTr/missing.nii.gz,labelsTr/missing.nii.gz,phantom_seen,train\n")
        fh.write("imagesTr/phantom_00005.nii.gz,labelsTr/phantom_00005.nii.gz,not_a_dataset,train\n")
    report = check_data(out / "datalist.csv")
    assert not report.ok
    text = report.text()
    assert "label values [40] are outside the phantom_seen mapping" in text
    assert "label shape" in text and "affine differs" in text
    assert "image file is missing" in text
    assert "'not_a_dataset' is not in the registry" in text
    assert "listed 2 times" in text
    assert "phantom_00099.nii.gz: matches the phantom_seen layout but is not in the list" in text
    assert main(["check-data", "--list", str(out / "datalist.csv")]) == 1


def test_make_list_from_registry_layout(tmp_path):
    root = tmp_path / "BTCV"
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    for i in (1, 2, 3):
        _save(root / "RawData/Training/img" / f"img{i:04d}.nii.gz", np.zeros((8, 8, 4), np.int16), aff)
        lab = np.zeros((8, 8, 4), np.uint8)
        lab[2:4, 2:4, 1] = i  # spleen / right kidney / left kidney
        _save(root / "RawData/Training/label" / f"label{i:04d}.nii.gz", lab, aff)
    (root / "RawData/Training/img/._img0001.nii.gz").write_bytes(b"junk")
    n = make_list("btcv", root, tmp_path / "btcv.csv", val_fraction=0.34, seed=1)
    assert n == 3
    cases = read_datalist(tmp_path / "btcv.csv", root)
    assert [c.label.name for c in cases] == ["label0001.nii.gz", "label0002.nii.gz", "label0003.nii.gz"]
    assert sum(c.split == "val" for c in cases) == 1
    assert check_data(tmp_path / "btcv.csv", root).ok


def test_preprocessing_and_crops():
    reg = load_registry(catalog=CAT)
    pipe = PipelineConfig(spacing=(6.0, 6.0, 6.0), roi=(64, 64, 32), crop=CropConfig(pos=1.0, neg=0.0, tumor_prob=1.0))
    item = phantom_items(7, 1, "seen", 4.0, "phantom_seen")[0]
    s = preprocess_transforms(reg, pipe, True)(item)
    assert s["image"].shape[0] == 1 and s["label"].shape[0] == 2 and s["label"].dtype == torch.uint8
    assert float(s["image"].min()) >= 0 and float(s["image"].max()) <= 1
    np.testing.assert_allclose(np.abs(np.diag(np.asarray(s["image"].affine)[:3, :3])), 6.0)
    assert all(n >= r for n, r in zip(s["image"].shape[1:], pipe.roi))
    assert s["annotated"].sum() == len(reg["phantom_seen"].annotated)
    assert len(s["tumor_idx"]) > 0
    aug = augment_transforms(pipe)
    aug.set_random_state(seed=0)
    crops = aug(dict(s))
    assert len(crops) == 1 and crops[0]["image"].shape == (1, 64, 64, 32)
    tumor = np.isin(crops[0]["label"][0].numpy(), [27, 28, 31])
    assert tumor.any()  # tumor_prob=1: the crop is centred on a tumour
    aug.set_random_state(seed=0)
    again = aug(dict(s))
    assert torch.equal(crops[0]["image"], again[0]["image"])  # per-sample seed -> same augmentation


def test_epoch_plan_is_a_function_of_seed_epoch_rank():
    p = epoch_plan(10, seed=1, epoch=3)
    assert sorted(i for i, _ in p) == list(range(10)) and p == epoch_plan(10, seed=1, epoch=3)
    assert p != epoch_plan(10, seed=1, epoch=4)
    r0, r1 = epoch_plan(5, 1, 0, rank=0, world=2), epoch_plan(5, 1, 0, rank=1, world=2)
    assert len(r0) == len(r1) == 3 and {i for i, _ in r0 + r1} == set(range(5))


def test_disk_cache_holds_the_preprocessed_case(tmp_path):
    from training.data import cached_dataset

    reg = load_registry(catalog=CAT)
    pipe = PipelineConfig(spacing=(8.0, 8.0, 8.0), roi=(64, 32, 32))
    items = phantom_items(3, 1, "none", 8.0, "phantom_organs")
    ds = cached_dataset(items, preprocess_transforms(reg, pipe, True), "disk", tmp_path / "cache")
    first = ds[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = ds[0]
    assert torch.equal(torch.as_tensor(first["label"]), torch.as_tensor(second["label"]))
    assert first["annotated"].sum() == len(reg["phantom_organs"].annotated)


def test_phantom_cases_carry_their_sex():
    """Evaluation and calibration pass it to the segmenter: a class of the other sex (prostate in a
    woman) is not drawn (model.segment: patient_sex)."""
    from training.calibration import load_cases
    from training.phantoms import generate
    from training.registry import load_registry

    item = phantom_items(3, 1, "none", 8.0, "phantom_organs")[0]
    case = load_cases([item], load_registry())[0]
    assert case.sex == generate(3, spacing=8.0, tumor_types=()).info["sex"] in ("female", "male")


def test_a_data_spec_names_its_cases_for_eval_and_calibration():
    # Phantom tumour types pick the registry dataset unless the caller names one (eval scores
    # every phantom as phantom_all); the real CTs are refused where the caller says so.
    seen = spec_items("phantom:3:1:seen:8", None, 4.0, tumours="all", real=True)
    assert [(i["case"], i["dataset"]) for i in seen] == [("phantom_00003", "phantom_seen")]
    assert seen[0]["image"].shape == phantom_items(3, 1, "seen", 8.0)[0]["image"].shape
    assert spec_items("phantom:3:1", None, 8.0, tumours="none", real=False)[0]["dataset"] == "phantom_organs"
    as_eval = spec_items("phantom:3:1:unseen:8", None, 4.0, tumours="all", real=True, dataset="phantom_all")
    assert as_eval[0]["dataset"] == "phantom_all"
    with pytest.raises(ValueError, match="one of"):
        spec_items("phantom:3:1:unseen:8", None, 4.0, tumours="all", real=True)
    with pytest.raises(ValueError, match="evaluation only"):
        spec_items("real", None, 4.0, tumours="seen", real=False)
