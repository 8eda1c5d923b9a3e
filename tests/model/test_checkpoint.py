from __future__ import annotations

import pytest
import torch

from model.catalog import load_catalog
from model.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from model.network import DSMNet
from tests.model.model_helpers import tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory, text_table):
    torch.manual_seed(0)
    model = DSMNet(tiny_config(stage=2))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    training = {"epochs": 3, "datasets": ["BTCV", "LiTS"], "dice": {"Liver": 0.91}, "notes": None}
    save_checkpoint(path, model, load_catalog(), text_table, version="dsm-tiny-test-0.1", training=training)
    return model, path, training


def test_round_trip_cpu(saved, text_table):
    model, path, training = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)  # safe loading works
    assert raw["format"] == FORMAT
    assert set(raw) >= {"version", "config", "catalog", "preprocessing", "training", "state_dict", "created"}
    ck = load_checkpoint(path, expect_catalog=load_catalog(), expect_config=model.cfg)
    assert ck.version == "dsm-tiny-test-0.1" and ck.training == training
    assert ck.config == model.cfg and ck.class_names == load_catalog().names
    assert ck.prompt_names[24] == "Celiac Truck"
    assert ck.preprocessing == {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "hu_window": [-175.0, 250.0],
                                "roi_size": [64, 64, 64], "crop_margin": 2}
    torch.testing.assert_close(ck.embeddings, text_table)
    rebuilt = ck.build_model()
    assert not rebuilt.training
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(rebuilt.text_embeddings, text_table)


def test_catalog_mismatches_are_explained(saved):
    _, path, _ = saved
    names = load_catalog().names
    swapped = names.copy()
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(CheckpointError,
                       match="class order differs at index 2: checkpoint has 'Right Kidney', catalog has 'Left Kidney'"):
        load_checkpoint(path, expect_catalog=swapped)
    with pytest.raises(CheckpointError, match=r"lacks 1 class\(es\) the model was trained with: \['Spleen'\]"):
        load_checkpoint(path, expect_catalog=names[1:])
    load_checkpoint(path, expect_catalog=names + ["Bone Metastasis"])  # appended classes: zero-shot
    with pytest.raises(CheckpointError, match=r"not trained with: \['Bone Metastasis'\]"):
        load_checkpoint(path, expect_catalog=names + ["Bone Metastasis"], allow_extra_classes=False)


def test_config_mismatch_is_explained(saved):
    _, path, _ = saved
    other = tiny_config(stage=2).replace(**{"decoder.query_dim": 64, "preprocessing.spacing": [1.5, 1.5, 1.5]})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect_config=other)
    assert "decoder.query_dim: 32 != 64" in str(err.value)
    assert "preprocessing.spacing: [3.0, 3.0, 3.0] != [1.5, 1.5, 1.5]" in str(err.value)


def test_damaged_or_foreign_files_are_refused(saved, tmp_path):
    _, path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["catalog"]["embeddings"][3, 0] += 0.5
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not match their recorded sha256"):
        load_checkpoint(tmp_path / "edited.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["decoder"]["bogus"] = 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"config does not fit this version.*decoder.bogus"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a DSM checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable DSM checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_save_refuses_what_safe_loading_could_not_read(saved, tmp_path, text_table):
    model, _, _ = saved
    import datetime

    with pytest.raises(CheckpointError, match=r"training.when: date is not plain data"):
        save_checkpoint(tmp_path / "x.pt", model, load_catalog(), text_table, "v", training={"when": datetime.date.today()})
    with pytest.raises(CheckpointError, match="embeddings must be"):
        save_checkpoint(tmp_path / "x.pt", model, load_catalog(), text_table[:10], "v")
    assert not (tmp_path / "x.pt").exists()


def test_stage1_checkpoint_seeds_stage2(tmp_path, text_table):
    torch.manual_seed(0)
    stage1 = DSMNet(tiny_config(stage=1))
    organs = load_catalog().organs
    save_checkpoint(tmp_path / "s1.pt", stage1, [o.name for o in organs], text_table[:25], "dsm-s1")
    ck = load_checkpoint(tmp_path / "s1.pt")
    assert ck.config.stage == 1
    stage2 = DSMNet(ck.config.with_stage(2))
    report = stage2.load_stage1(ck.state_dict)
    assert report.missing and all(k.startswith("class_head") for k in report.unexpected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_round_trip_gpu_to_cpu(saved, tmp_path, text_table):
    model, _, _ = saved
    gpu = DSMNet(model.cfg).cuda()
    gpu.load_state_dict(model.state_dict())
    save_checkpoint(tmp_path / "gpu.pt", gpu, load_catalog(), text_table.cuda(), "gpu")
    ck = load_checkpoint(tmp_path / "gpu.pt", map_location="cpu")
    assert all(v.device.type == "cpu" for v in ck.state_dict.values())
    back = load_checkpoint(tmp_path / "gpu.pt", map_location="cuda").build_model()
    assert next(back.parameters()).is_cuda


@pytest.mark.parametrize("key", ["seen_tumors", "seen_tumours"])  # new files / files written before the rename
def test_seen_tumor_list_is_read_under_either_spelling(saved, key):
    _, path, _ = saved
    ck = load_checkpoint(path)
    ck.training = {key: ["Liver Tumor", "Kidney Cyst"]}
    assert ck.seen_tumors == ["Liver Tumor", "Kidney Cyst"]
    ck.training = {}
    assert ck.seen_tumors is None
