"""Start Stage 2 where Stage 1 ended: fit the fresh class projection before training.

Stage 2 reads a class probability P_c = sum_q p(c | q) sigmoid(M_q), with p(c | q) from the
cosine between ``class_proj(q)`` and the class text rows. ``class_proj`` is new in Stage 2. With
its random initialisation p(c | q) does not map query q to its class c, so every organ
probability of a model loaded from Stage 1 starts near 0 although the organ queries' masks are
intact (measured on the demo model, phantoms 5000/5001: liver DSC 0.87-0.89 from the organ
query's own mask, 0.00 from P_c after the first Stage-2 step). Stage 2 then spends its steps
re-learning the assignment while the organ queries drift.

:func:`align_class_projection` fits ``class_proj`` alone (cross-entropy towards p(c = q | q) on the
queries the loaded network produces for a few training crops) before the first training step,
so P_c of every Stage-1 class starts at its Stage-1 value. Nothing else in the network changes.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import DSMNet


@dataclass(frozen=True)
class AlignReport:
    steps: int
    accuracy_before: float  # share of queries whose most likely class is their own
    accuracy_after: float
    own_probability_after: float  # mean p(c = q | q)

    def __str__(self) -> str:
        return (f"class projection aligned in {self.steps} steps: queries on their own class "
                f"{self.accuracy_before:.0%} -> {self.accuracy_after:.0%}, mean p(own class) "
                f"{self.own_probability_after:.3f}")


def _queries(net: DSMNet, images: Iterable[Tensor]) -> Tensor:
    """The (samples, N, C) inputs of ``class_proj`` for ``images`` (each (B, 1, X, Y, Z))."""
    seen: list[Tensor] = []
    hook = net.class_proj.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().float()))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for x in images:
                net(x)
    finally:
        hook.remove()
        net.train(was_training)
    if not seen:
        raise ValueError("no images to align the class projection on")
    return torch.cat(seen)


def align_class_projection(net: DSMNet, images: Iterable[Tensor], steps: int = 200, lr: float = 3e-3) -> AlignReport:
    """Fit ``net.class_proj`` so that p(c | q) is the identity on the queries ``images`` produce."""
    if net.stage != 2:
        raise ValueError("only a Stage-2 network has a class projection")
    queries = _queries(net, images)
    n = queries.shape[1]
    target = torch.arange(n, device=queries.device).expand(queries.shape[0], n).reshape(-1)

    def accuracy() -> tuple[float, float]:
        with torch.no_grad():
            p = net.class_cos_logits(queries).softmax(-1)
            own = p.reshape(-1, p.shape[-1]).gather(1, target[:, None]).mean().item()
            return (p.argmax(-1).reshape(-1) == target).float().mean().item(), own

    before, _ = accuracy()
    params = list(net.class_proj.parameters())
    # The fit runs even when training then holds the projection fixed (optim.freeze): it is
    # what makes a fresh projection usable at all.
    trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        logits = net.class_cos_logits(queries)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p, flag in zip(params, trainable):
        p.grad = None
        p.requires_grad_(flag)
    after, own = accuracy()
    return AlignReport(steps, before, after, own)
