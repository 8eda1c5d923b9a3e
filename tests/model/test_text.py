from __future__ import annotations

import hashlib
import json

import pytest
import torch

from model.catalog import load_catalog
from model.text import (
    DEFAULT_TABLE_INDEX,
    DEFAULT_TABLE_PATH,
    ClipTextEncoder,
    MissingEmbeddingError,
    class_embeddings,
    embeddings_sha256,
    load_default_table,
)
from tests.tools import shared_data


def test_shipped_table_shape_order_and_normalisation():
    table = load_default_table()
    cat = load_catalog()
    assert table.embeddings.shape == (45, 512) and table.embeddings.dtype == torch.float32
    torch.testing.assert_close(table.embeddings.norm(dim=1), torch.ones(45))
    assert list(table.prompt_names) == cat.prompt_names
    assert "Celiac Truck" in table.prompt_names
    index = json.loads(DEFAULT_TABLE_INDEX.read_text())
    assert hashlib.sha256(DEFAULT_TABLE_PATH.read_bytes()).hexdigest() == index["file_sha256"]
    raw = torch.load(DEFAULT_TABLE_PATH, map_location="cpu", weights_only=True)
    assert raw.dtype == torch.float16 and 8.0 < raw.float().norm(dim=1).min() < raw.float().norm(dim=1).max() < 10.0
    assert (DEFAULT_TABLE_PATH.parent / "LICENSE_CC-BY-4.0.txt").exists()
    # Rows are distinct classes: no two rows identical after normalisation.
    sims = table.embeddings @ table.embeddings.T
    assert (sims - torch.eye(45)).max() < 0.999


def test_shipped_table_is_the_shared_file():
    src = shared_data("04_dsm_clip_text_embeddings", "organ_encoding.pth")
    assert src.read_bytes() == DEFAULT_TABLE_PATH.read_bytes()


def test_catalog_embeddings_follow_catalog_order():
    cat = load_catalog()
    emb = class_embeddings(cat)
    table = load_default_table()
    assert torch.equal(emb[cat.index_of("Liver Tumor")], table.embeddings[30])
    assert len(embeddings_sha256(emb)) == 64 and embeddings_sha256(emb) == embeddings_sha256(emb.clone())


def test_unknown_class_without_checkpoint_is_explained():
    with pytest.raises(MissingEmbeddingError) as err:
        class_embeddings(["Liver", "Bone Metastasis"])
    msg = str(err.value)
    assert "Bone Metastasis" in msg and "--clip-checkpoint" in msg and "Liver'" not in msg


TINY_CLIP = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised tiny open_clip model registered under a custom name, saved to disk."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    (root / "dsm-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "dsm-test-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("dsm-test-tiny-clip", pretrained=None).eval()
    torch.save(model.state_dict(), root / "tiny.pt")
    return model, root / "tiny.pt", root


def test_encode_with_local_checkpoint_and_cache(tiny_clip):
    import open_clip

    model, ckpt, root = tiny_clip
    enc = ClipTextEncoder(ckpt, "dsm-test-tiny-clip", cache_dir=root / "cache")
    emb = enc.encode(["Liver", "Bone Metastasis"])
    assert emb.shape == (2, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    tok = open_clip.get_tokenizer("dsm-test-tiny-clip")
    with torch.no_grad():
        ref = model.encode_text(tok(["A computerized tomography of a Bone Metastasis"]))
    torch.testing.assert_close(emb[1], torch.nn.functional.normalize(ref, dim=-1)[0])
    # A second encoder answers from the disk cache without building the model.
    again = ClipTextEncoder(ckpt, "dsm-test-tiny-clip", cache_dir=root / "cache")
    assert torch.equal(again.encode(["Bone Metastasis"])[0], emb[1]) and again._model is None
    # The cache key includes the checkpoint hash: other weights, other cache file.
    other = root / "other.pt"
    state = {k: v + 0.01 for k, v in torch.load(ckpt, weights_only=True).items()}
    torch.save(state, other)
    assert ClipTextEncoder(other, "dsm-test-tiny-clip", cache_dir=root / "cache").cache_path != enc.cache_path


def test_class_embeddings_mixes_table_and_checkpoint(tiny_clip):
    _, ckpt, root = tiny_clip
    emb = class_embeddings(
        ["Liver", "Bone Metastasis"], clip_checkpoint=ckpt, model_name="dsm-test-tiny-clip", cache_dir=root / "cache"
    )
    assert torch.equal(emb[0], load_default_table().get("Liver"))  # known rows keep the trained table
    torch.testing.assert_close(emb[1].norm(), torch.tensor(1.0))
