"""Anomaly prompt, prompt-masked attention and the semantic diffusion, module by module."""
from __future__ import annotations

import torch

from model.amvp import MaskedCrossAttention, anomaly_prompt
from model.dqr import diffusion_weights, semantic_diffusion


def test_a_patch_fully_claimed_by_organs_gives_an_empty_prompt():
    logits = torch.full((2, 25, 4, 4, 4), 3.0)
    assert not anomaly_prompt(logits, (1.0, 1.0, 1.0)).any()
    # Nothing claimed at all: no envelope, so no prompt either (a relative threshold would
    # have selected the "least organ-like" half of the patch).
    assert not anomaly_prompt(torch.full((1, 25, 4, 4, 4), -3.0), (1.0, 1.0, 1.0)).any()


def _response_map() -> torch.Tensor:
    """Synthetic organ responses R' (1, 25, 12, 12, 12): an organ (channel 5) occupying a ball,
    with a lesion inside it that no organ claims, fat around it (nothing claims), and a second
    organ (channel 7) cut by the border of the patch, three cells of fat away from the first
    (closer organs are bridged by the closing: the envelope is that of all organ claims)."""
    z, y, x = torch.meshgrid(*(torch.arange(12.0),) * 3, indexing="ij")
    r = ((z - 5) ** 2 + (y - 5) ** 2 + (x - 4) ** 2).sqrt()
    logits = torch.full((1, 25, 12, 12, 12), -4.0)
    logits[0, 5][r < 3.8] = 4.0
    logits[0, 5][r < 1.5] = -2.0  # the lesion: inside the organ, unclaimed
    logits[0, 7][(x >= 11)] = 3.0  # an organ cut by the patch border at x = 11
    return logits


def test_prompt_selects_a_lesion_inside_an_organ_and_not_the_fat_around_it():
    logits = _response_map()
    prompt = anomaly_prompt(logits, (1.0, 1.0, 1.0))[0, 0]
    z, y, x = torch.meshgrid(*(torch.arange(12.0),) * 3, indexing="ij")
    r = ((z - 5) ** 2 + (y - 5) ** 2 + (x - 4) ** 2).sqrt()
    lesion = r < 1.5
    assert prompt[lesion].all(), "the unclaimed lesion inside the organ must be prompted"
    fat = r > 4.5
    assert not prompt[fat].any(), "fat outside the organ envelope must not be prompted"
    assert int(prompt.sum()) == int(lesion.sum())
    # Organ voxels are claimed, never prompted; the border organ is neither eroded nor grown.
    assert not prompt[logits[0].amax(0) > 0].any()


def test_prompt_radius_closes_a_lesion_open_to_the_organ_surface():
    logits = _response_map()
    z, y, x = torch.meshgrid(*(torch.arange(12.0),) * 3, indexing="ij")
    r = ((z - 5) ** 2 + (y - 5) ** 2 + (x - 4) ** 2).sqrt()
    notch = (r < 3.8) & (r >= 2.0) & (z < 4) & ((y - 5).abs() <= 1) & ((x - 4).abs() <= 1)
    logits[0, 5][notch] = -2.0  # a lesion reaching the organ surface: not an enclosed hole
    no_close = anomaly_prompt(logits, (0.0, 0.0, 0.0))[0, 0]
    closed = anomaly_prompt(logits, (2.0, 2.0, 2.0))[0, 0]
    assert not no_close[notch].all()
    assert closed[notch].sum() > no_close[notch].sum()


def test_torch_and_numpy_envelopes_agree():
    import numpy as np

    from model.envelope import envelope_np, envelope_t

    g = torch.Generator().manual_seed(3)
    masks = torch.rand(3, 1, 14, 12, 10, generator=g) > 0.55
    for radius in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (2.0, 1.0, 1.5)):
        t = envelope_t(masks, radius)
        for b in range(3):
            n = envelope_np(masks[b, 0].numpy(), radius)
            assert np.array_equal(t[b, 0].numpy(), n), radius


def test_masked_attention_stays_inside_the_prompt_and_handles_empty_prompts():
    torch.manual_seed(0)
    attn = MaskedCrossAttention(16, num_heads=4)
    attn.record = True
    queries = torch.randn(2, 5, 16, requires_grad=True)
    memory = torch.randn(2, 30, 16, requires_grad=True)
    prompt = torch.zeros(2, 30, dtype=torch.bool)
    prompt[0, [3, 7, 8]] = True  # sample 1 keeps an empty prompt
    out = attn(queries, memory, prompt)
    w = attn.last_weights
    assert (w[0][..., ~prompt[0]] == 0).all()
    torch.testing.assert_close(w[0][..., prompt[0]].sum(-1), torch.ones(4, 5))
    assert (w[1] > 0).all()  # empty prompt: attends everywhere
    (out * torch.randn_like(out)).sum().backward()  # a plain sum of a LayerNorm output has zero gradient
    assert torch.isfinite(queries.grad).all() and torch.isfinite(memory.grad).all()
    # Memory outside the prompt has no influence on sample 0.
    assert (memory.grad[0, ~prompt[0]] == 0).all() and memory.grad[0, prompt[0]].abs().sum() > 0


def test_diffusion_weights_are_a_normalised_neighbourhood():
    guide = torch.zeros(1, 2, 5, 5, 5)
    w = diffusion_weights(guide, lam=1.0)
    assert w.shape == (1, 27, 5, 5, 5)
    torch.testing.assert_close(w.sum(1), torch.ones(1, 5, 5, 5))
    torch.testing.assert_close(w[0, :, 2, 2, 2], torch.full((27,), 1 / 27))  # interior, uniform guidance
    assert (w[0, :, 0, 0, 0] > 0).sum() == 8  # a corner has 8 in-volume neighbours (itself included)


def test_diffusion_smooths_within_regions_and_stops_at_guidance_edges():
    features = torch.randn(1, 3, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    flat = semantic_diffusion(features, diffusion_weights(torch.zeros(1, 1, 6, 6, 6), 1.0), steps=1)
    # Uniform guidance: each interior voxel becomes its 3x3x3 mean.
    mean = torch.nn.functional.avg_pool3d(features, 3, stride=1)
    torch.testing.assert_close(flat[:, :, 1:-1, 1:-1, 1:-1], mean)
    # A strong guidance edge between x<3 and x>=3 keeps the two halves from mixing.
    guide = torch.zeros(1, 1, 6, 6, 6)
    guide[..., 3:] = 100.0
    halves = torch.zeros(1, 1, 6, 6, 6)
    halves[..., 3:] = 1.0
    out = semantic_diffusion(halves, diffusion_weights(guide, 1.0), steps=3)
    torch.testing.assert_close(out, halves)
    # More steps and a larger lambda diffuse further across the same edge.
    leaky = semantic_diffusion(halves, diffusion_weights(guide, 1000.0), steps=3)
    assert (leaky[..., 2] > 0.1).all() and (leaky[..., 3] < 0.9).all()
