from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import load_model_config
from model.network import DSMNet, build_model
from tests.model.model_helpers import tiny_config

LAYER_SIDES = (2, 4, 8, 16)  # 64^3 ROI at strides 32, 16, 8, 4


def training_loss(out: dict, stage: int) -> torch.Tensor:
    """Stand-in for the training loss: BCE on every output the DSM losses supervise."""
    gen = torch.Generator().manual_seed(0)

    def bce(logits):
        target = (torch.rand(logits.shape, generator=gen) > 0.5).float()
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    loss = bce(out["mask_logits"]) + sum(bce(r) for r in out["layer_logits"])
    if stage == 1:
        return loss + bce(out["class_logits"])
    cos = out["class_cos_logits"]
    p_own = cos.float().softmax(-1).diagonal(dim1=1, dim2=2)  # p(class i | query i)
    return loss + F.binary_cross_entropy(p_own.clamp(1e-6, 1 - 1e-6), torch.ones_like(p_own))


def assert_every_parameter_learns(model: DSMNet) -> None:
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


def test_small_config_stage2_forward_backward(text_table):
    cfg = load_model_config("small").replace(**{"ssm.backend": "torch"})
    torch.manual_seed(0)
    model = DSMNet(cfg)
    model.set_text_embeddings(text_table)
    x = torch.rand(1, 1, 64, 64, 64)
    out = model(x)
    assert out["mask_logits"].shape == (1, 45, 64, 64, 64)
    assert [tuple(r.shape) for r in out["layer_logits"]] == [(1, 25, s, s, s) for s in LAYER_SIDES]
    assert [None if p is None else tuple(p.shape) for p in out["prompts"]] == \
        [(1, 1, s, s, s) if on else None for s, on in zip(LAYER_SIDES, cfg.amvp.scales)]
    assert out["class_cos_logits"].shape == (1, 45, 45)
    assert out["anomaly"].shape == (1, 1, 64, 64, 64)
    assert "class_logits" not in out
    training_loss(out, 2).backward()
    assert_every_parameter_learns(model)
    ssm = [n for n, _ in model.named_parameters() if ".ssm." in n]
    assert len(ssm) == 4 * 9  # in_proj, conv1d (w, b), x_proj, dt_proj (w, b), A_log, D, out_proj per layer


def test_stage1_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = DSMNet(tiny_config(stage=1))
    assert not hasattr(model, "tumor_queries") and not hasattr(model, "dqr")
    out = model(torch.rand(1, 1, 64, 64, 64))
    assert out["mask_logits"].shape == (1, 25, 64, 64, 64)
    assert out["class_logits"].shape == (1, 25)
    assert "class_cos_logits" not in out and "prompts" not in out
    training_loss(out, 1).backward()
    assert_every_parameter_learns(model)
    # The SSM of the finest layer learns although the k-means argmax has no gradient.
    assert model.kmmm[3].ssm.A_log.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_stage2(text_table):
    torch.manual_seed(0)
    model = DSMNet(tiny_config(stage=2)).eval()
    model.set_text_embeddings(text_table)
    for block in model.dqr:
        block.cross.record = True
    x = torch.rand(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    weights = [block.cross.last_weights for block in model.dqr]
    return model, x, out, weights


def test_fresh_tumor_masks_start_small_and_organ_masks_do_not(tiny_stage2):
    model, _, out, _ = tiny_stage2
    masks = out["mask_logits"].sigmoid()
    organ, tumor = masks[:, : model.n_organ].mean().item(), masks[:, model.n_organ :].mean().item()
    # without the prior both would cover about half of the crop (random sign of the cosine)
    assert tumor < 0.15 < organ


def test_tumor_queries_attend_only_inside_the_prompt(tiny_stage2):
    model, _, out, weights = tiny_stage2
    partial = 0
    for prompt, w in zip(out["prompts"], weights):
        assert w.shape[:3] == (2, model.cfg.decoder.num_heads, 20)
        if prompt is None:  # switched off at this scale (amvp.scales): attend everywhere
            assert (w > 0).all()
            continue
        for b in range(2):
            inside = prompt[b].flatten()
            wb = w[b]  # (heads, N_t, V)
            assert torch.allclose(wb.sum(-1), torch.ones(()))
            if inside.any():
                assert (wb[..., ~inside] == 0).all(), "a tumour query attended outside its prompt"
                partial += int(not inside.all())
            else:
                assert (wb > 0).all(), "an empty prompt must let the tumour queries attend everywhere"
    assert partial > 0, "no non-trivial prompt occurred; the test would not check the mask"


def test_outputs_semantics(tiny_stage2):
    model, _, out, _ = tiny_stage2
    masks = out["mask_logits"]
    torch.testing.assert_close(out["anomaly"], -masks[:, :25].amax(dim=1, keepdim=True))
    cos = out["class_cos_logits"]
    assert cos.abs().max() <= 1 / model.cfg.text.tau + 1e-3  # cosine / tau
    probs = model.semantic_probs(out)
    assert probs.shape == (2, 45, 64, 64, 64)
    assert probs.min() >= 0 and probs.max() <= 1
    # P_c = sum_q p(c|q) sigmoid(M_q) at one voxel, computed by hand.
    p = cos.softmax(-1)[0]
    voxel = masks[0, :, 10, 20, 30].sigmoid()
    torch.testing.assert_close(probs[0, :, 10, 20, 30], (p * voxel[:, None]).sum(0).clamp(max=1))
    for prompt, refined, on in zip(out["prompts"], out["layer_logits"], model.cfg.amvp.scales):
        if not on:
            assert prompt is None
            continue
        assert prompt.dtype == torch.bool and prompt.shape[2:] == refined.shape[2:]
    # Bounded mask logits: |M| <= s_max (cosine times the clamped learned scale).
    assert masks.abs().max() <= model.cfg.decoder.mask_scale_range[1] + 1e-4


def test_determinism_with_a_seed(tiny_stage2, text_table):
    model, x, out, _ = tiny_stage2
    torch.manual_seed(0)
    again = DSMNet(tiny_config(stage=2)).eval()
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    again.set_text_embeddings(text_table)
    with torch.no_grad():
        out2 = again(x)
    assert torch.equal(out["mask_logits"], out2["mask_logits"])
    assert torch.equal(out["class_cos_logits"], out2["class_cos_logits"])


def test_stage2_loads_stage1_weights_non_strictly():
    torch.manual_seed(0)
    stage1 = DSMNet(tiny_config(stage=1))
    torch.manual_seed(1)
    stage2 = DSMNet(tiny_config(stage=2))
    report = stage2.load_stage1(stage1.state_dict())
    fresh = {"tumor_queries", "tumor_mask_bias", "dqr", "interaction", "interaction_gate", "class_proj"}
    assert {k.split(".")[0] for k in report.missing} == fresh
    assert {k.split(".")[0] for k in report.unexpected} == {"class_head"}
    assert "missing: " in str(report) and "class_head" in str(report)
    # fresh tumour masks start at the configured prior, not at half of every crop
    prior = stage2.cfg.decoder.tumor_mask_prior
    assert torch.allclose(stage2.tumor_mask_bias.sigmoid(), torch.full((stage2.n_tumor,), prior))
    s2 = stage2.state_dict()
    for k, v in stage1.state_dict().items():
        if not k.startswith("class_head"):
            assert torch.equal(s2[k], v), k
    wider = DSMNet(tiny_config(stage=2).replace(**{"decoder.query_dim": 64}))
    with pytest.raises(ValueError, match="differ in shape"):
        wider.load_stage1(stage1.state_dict())


def test_stage2_without_text_embeddings_is_explained():
    model = DSMNet(tiny_config(stage=2))
    with pytest.raises(RuntimeError, match="set_text_embeddings"):
        model._text(None)
    with pytest.raises(ValueError, match="at least 45 text rows"):
        model.set_text_embeddings(torch.randn(10, 512))


@pytest.mark.slow
def test_paper_config_one_96_patch_forward(text_table):
    cfg = load_model_config("paper").replace(**{"ssm.backend": "torch"})
    torch.manual_seed(0)
    model = DSMNet(cfg).eval()
    model.set_text_embeddings(text_table)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 96, 96, 96))
    assert out["mask_logits"].shape == (1, 45, 96, 96, 96)
    assert [tuple(r.shape) for r in out["layer_logits"]] == [(1, 25, s, s, s) for s in (3, 6, 12, 24)]
    assert out["class_cos_logits"].shape == (1, 45, 45)
    assert torch.isfinite(out["mask_logits"]).all() and torch.isfinite(out["anomaly"]).all()


def test_stage2_starts_from_exactly_the_stage1_organ_masks():
    # The organ-tumour interaction is new in Stage 2; its gate starts at 0, so a Stage-2 model
    # initialised from Stage-1 weights gives the Stage-1 organ mask logits, whatever the fresh
    # interaction blocks hold. Ungated (checkpoints before the gate) it does not.
    torch.manual_seed(0)
    s1 = build_model(tiny_config(stage=1)).eval()
    s2 = build_model(tiny_config(stage=2)).eval()
    s2.load_stage1(s1.state_dict())
    s2.set_text_embeddings(torch.randn(45, s2.cfg.text.dim))
    assert torch.count_nonzero(s2.interaction_gate) == 0
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        organ1 = s1(x)["mask_logits"]
        organ2 = s2(x)["mask_logits"][:, : s2.n_organ]
        torch.testing.assert_close(organ2, organ1, rtol=0, atol=1e-5)
        ungated = build_model(tiny_config(stage=2).replace(**{"decoder.interaction_gate": False})).eval()
        ungated.load_state_dict({k: v for k, v in s2.state_dict().items() if k != "interaction_gate"})
        ungated.set_text_embeddings(s2.text_embeddings)
        assert (ungated(x)["mask_logits"][:, : s2.n_organ] - organ1).abs().max() > 1e-3
