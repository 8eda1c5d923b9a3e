"""Anomaly prompt, prompt-masked attention and the semantic diffusion, module by module."""
from __future__ import annotations

import torch

from model.amvp import MaskedCrossAttention, anomaly_prompt, anomaly_score
from model.dqr import diffusion_weights, semantic_diffusion


def test_constant_organ_map_gives_zero_score_and_empty_prompt():
    logits = torch.full((2, 25, 4, 4, 4), 3.0)
    score = anomaly_score(logits)
    assert torch.isfinite(score).all() and (score == 0).all()
    assert not anomaly_prompt(logits).any()


def test_anomaly_score_is_normalised_per_sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 25, 3, 3, 3, generator=g)
    logits[1] *= 100  # a batch-wide min-max would squash sample 0 towards a constant
    score = anomaly_score(logits)
    for b in range(2):
        s = score[b].flatten()
        assert abs(s.min().item()) < 1e-6 and abs(s.max().item() - 1) < 1e-4
        expected = -logits[b].amax(0)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        torch.testing.assert_close(score[b, 0], expected, rtol=1e-4, atol=1e-4)
    # Voxels with the weakest organ response are the prompt.
    prompt = anomaly_prompt(logits)
    weakest = logits[0].amax(0).flatten().argmin()
    assert prompt[0].flatten()[weakest]


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
