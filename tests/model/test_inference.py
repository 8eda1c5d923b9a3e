from __future__ import annotations

import json

import pytest
import torch

from model.catalog import load_catalog
from model.checkpoint import load_checkpoint, save_checkpoint
from model.inference import Predictor
from model.network import DSMNet
from model.text import MissingEmbeddingError
from tests.model.model_helpers import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, text_table):
    torch.manual_seed(0)
    model = DSMNet(tiny_config(stage=2)).eval()
    model.set_text_embeddings(text_table)
    path = tmp_path_factory.mktemp("inf") / "tiny.pt"
    save_checkpoint(path, model, load_catalog(), text_table, version="dsm-tiny-test-0.1")
    x = torch.rand(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    return model, load_checkpoint(path), x


def test_zero_shot_extra_class_gets_a_channel(tiny, text_table):
    model, _, x = tiny
    names = load_catalog().names
    liver_tumor = names.index("Liver Tumor")
    # An unseen name whose text embedding equals that of Liver Tumor must get exactly its map.
    pred = Predictor(model, names, text_table, extra_names=["Hepatic Lesion"], extra_embeddings=text_table[[liver_tumor]])
    assert pred.channel_names == names + ["Hepatic Lesion", "anomaly"]
    y = pred(x)
    assert y.shape == (1, 47, 64, 64, 64) and y.dtype == torch.float32
    assert 0 <= y.min() and y.max() <= 1
    torch.testing.assert_close(y[:, 45], y[:, liver_tumor])
    # And by the formula: P_c = sum_q p(c|q) sigmoid(M_q), p over the 46 text rows.
    with torch.no_grad():
        out = model(x, text_embeddings=torch.cat([text_table, text_table[[liver_tumor]]]))
    p = out["class_cos_logits"].softmax(-1)[0, :, 45]
    expected = (p[:, None, None, None] * out["mask_logits"][0].sigmoid()).sum(0).clamp(max=1)
    torch.testing.assert_close(y[0, 45], expected)
    torch.testing.assert_close(y[:, 46:], (-out["mask_logits"][:, :25].amax(1, keepdim=True)).sigmoid())


def test_only_supervised_queries_enter_the_class_maps(tiny, text_table):
    model, _, x = tiny
    names = load_catalog().names
    seen = ["Liver Tumor"]
    pred = Predictor(model, names, text_table, seen_tumors=seen)
    trained = torch.tensor([q < model.n_organ or names[q] in seen for q in range(model.n_queries)])
    assert int(trained.sum()) == model.n_organ + 1
    y = pred(x)
    with torch.no_grad():
        out = model(x, text_embeddings=text_table)
    p = out["class_cos_logits"].softmax(-1)[0]  # (N, K)
    masks = out["mask_logits"][0].sigmoid() * trained[:, None, None, None]
    for c in (names.index("Liver"), names.index("Kidney Cyst")):
        expected = (p[:, c, None, None, None] * masks).sum(0).clamp(max=1)
        torch.testing.assert_close(y[0, c], expected)
    # the gate changes the maps (an untrained query adds something without it) ...
    assert not torch.allclose(y[:, :45], Predictor(model, names, text_table)(x)[:, :45])
    # ... and leaves the anomaly channel (organ queries only) alone
    torch.testing.assert_close(y[:, 45:], Predictor(model, names, text_table)(x)[:, 45:])


def test_predictor_from_checkpoint_with_a_new_class_name(tiny, tmp_path):
    import open_clip

    _, ck, x = tiny
    with pytest.raises(MissingEmbeddingError, match="--clip-checkpoint"):
        Predictor.from_checkpoint(ck, extra_names=["Bone Metastasis"])
    cfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "dsm-test-tiny-clip2.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "dsm-test-tiny-clip2.json")
    torch.save(open_clip.create_model("dsm-test-tiny-clip2", pretrained=None).state_dict(), tmp_path / "clip.pt")
    pred = Predictor.from_checkpoint(
        ck, extra_names=["Bone Metastasis", "Liver Tumor Synonym"], clip_checkpoint=tmp_path / "clip.pt",
        clip_model="dsm-test-tiny-clip2",
    )
    assert pred.channel_names[-3:] == ["Bone Metastasis", "Liver Tumor Synonym", "anomaly"]
    assert pred.text.shape == (47, 512)
    torch.testing.assert_close(pred.text[:45], ck.embeddings)


def test_sliding_window_inference_over_a_larger_volume(tiny):
    from monai.inferers import sliding_window_inference

    _, ck, _ = tiny
    pred = Predictor.from_checkpoint(ck)
    volume = torch.rand(1, 1, 64, 64, 96)
    y = sliding_window_inference(volume, (64, 64, 64), 1, pred, overlap=0.25, mode="gaussian")
    assert y.shape == (1, 46, 64, 64, 96)
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1 + 1e-5


def test_stage1_predictor_outputs_organs_only(text_table):
    model = DSMNet(tiny_config(stage=1))
    organs = [o.name for o in load_catalog().organs]
    assert Predictor(model, organs).channel_names == organs + ["anomaly"]
    with pytest.raises(ValueError, match="Stage-1 model outputs exactly its 25 organ classes"):
        Predictor(model, organs, extra_names=["Liver Tumor"])
