"""Partial-label losses: Dice (per volume, per channel) + BCE on masks, class-presence BCE,
deep supervision of every kMMM layer's R'.

Only channels in a sample's partial-label template contribute: their terms are multiplied by
the template mask, so an unannotated channel receives exactly zero gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.catalog import Catalog


def multi_hot(label: Tensor, n_classes: int) -> Tensor:
    """(B, 2, ...) class map + parent map -> (B, n_classes, ...) float target, organ *tissue*.

    Channel c-1 is on for voxels of class c only: a tumour voxel is a positive for its own
    tumour class and a negative for its parent organ (the parent map is not used), so organ
    queries learn organ tissue and the anomaly map (1 - max organ) can light up inside organs.
    """
    b, spatial = label.shape[0], label.shape[2:]
    idx = label[:, :1].reshape(b, 1, -1).long()
    out = torch.zeros(b, n_classes + 1, idx.shape[-1], device=label.device)
    out.scatter_(1, idx, 1.0)
    return out[:, 1:].reshape(b, n_classes, *spatial)


def synthetic_lesions(label: Tensor) -> Tensor:
    """(B, 2, ...) -> (B, 1, ...) bool: voxels of synthetic exposure lesions.

    Encoding (training/exposure.py): class map 0 (no class is positive there) and parent map =
    the host organ's index (the parent map is otherwise non-zero only on tumour voxels).
    """
    return (label[:, :1] == 0) & (label[:, 1:2] > 0)


def voxel_weights(label: Tensor, is_tumor: Tensor) -> Tensor | None:
    """(B, N, ...) per-voxel weights of the mask losses, or None without synthetic lesions.

    On synthetic-lesion voxels tumour channels weigh 0: a synthetic lesion is never a positive
    of a tumour class, nor a negative (it is not a labelled tumour type). Organ channels keep
    weight 1 there (plain negatives); ``host_rejection`` adds the lesion-normalised term.
    is_tumor: (N,) bool per channel.
    """
    syn = synthetic_lesions(label)
    if not bool(syn.any()):
        return None
    n = is_tumor.shape[0]
    w_syn = torch.where(is_tumor, 0.0, 1.0).to(label.device)
    shape = (1, n) + (1,) * (label.dim() - 2)
    return torch.where(syn, w_syn.view(shape), torch.ones((), device=label.device))


def host_rejection(organ_logits: Tensor, label: Tensor) -> Tensor | None:
    """Mean BCE(max organ logit, 0) over the voxels inside organs that are no organ's tissue —
    tumour voxels and synthetic lesions (parent map > 0) — or None if there are none.

    The max over organ channels is what the anomaly output reads (A = 1 - max organ
    probability), so whichever organ claims a lesion is pushed off it, the host or a neighbour
    (a probe run rejected the host but let the stomach or gallbladder claim the lesion).
    Averaged over those voxels, not over the crop: in the crop-wide mean a 50-voxel lesion in a
    131k-voxel crop weighs nothing, and a first exposure run learned no rejection at all
    (synthetic-lesion rejection rate 0 of 12 after 125 steps). organ_logits (B, N_o, ...).
    """
    inside = label[:, 1] > 0
    if not bool(inside.any()):
        return None
    logit = organ_logits.float().amax(dim=1)[inside]
    return F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))


def tumor_parent_values(catalog: Catalog) -> dict[int, tuple[int, ...]]:
    """Tumour channel (0-based) -> class-map values (1-based catalog indices) of its parent
    organs: the ``tumor_parents`` argument of ``dsm_loss``."""
    return {e.index - 1: tuple(p.index for p in catalog.parents_of(e.name)) for e in catalog if e.is_tumor}


def tumor_regions(label: Tensor, parents: dict[int, tuple[int, ...]], radius: int) -> Tensor:
    """(B, 2, ...) label -> (B, T, ...) bool: where each tumour channel is read at inference.

    ``parents`` maps a tumour channel (0-based, in the order of the result) to class-map values
    (1-based catalog indices): its parent organs and itself. The region of channel t is the
    voxels of those classes and the tumours inside the parents (parent map), dilated by
    ``radius`` voxels: the ground-truth counterpart of the filled parent envelope that gates
    tumours in model/postprocess.py.
    """
    cls, par = label[:, 0], label[:, 1]
    regions = []
    for t in sorted(parents):
        values = torch.tensor(parents[t], device=label.device, dtype=cls.dtype)
        regions.append(torch.isin(cls, values) | torch.isin(par, values))
    region = torch.stack(regions, dim=1)
    if radius > 0:
        # only the (sample, channel) maps with a voxel in them: most crops hold few parents
        flat = region.flatten(0, 1)
        busy = flat.flatten(1).any(1).nonzero().squeeze(1)
        if len(busy):
            flat = flat.clone()
            flat[busy] = _dilate_cube(flat[busy].unsqueeze(1).float(), radius).squeeze(1) > 0
            region = flat.view_as(region)
    return region


def _dilate_cube(x: Tensor, radius: int) -> Tensor:
    """Max over a (2r+1)^d cube, as one 1-D max pool per spatial axis: the same result as one
    d-dimensional pool, but 3 k instead of k^3 comparisons per voxel. With the cube pool this
    dilation took a quarter of a CPU Stage-2 step (7^3 window, 20 tumour channels)."""
    k = 2 * radius + 1
    pool = F.max_pool3d if x.dim() == 5 else F.max_pool2d
    spatial = x.dim() - 2
    for axis in range(spatial):
        size = tuple(k if a == axis else 1 for a in range(spatial))
        pad = tuple(radius if a == axis else 0 for a in range(spatial))
        x = pool(x, size, stride=1, padding=pad)
    return x


def dice_bce_per_channel(logits: Tensor, target: Tensor, smooth: float = 1e-5,
                         weights: Tensor | None = None, region_mean: bool = False) -> tuple[Tensor, Tensor]:
    """Soft Dice loss and mean BCE per (sample, channel), each (B, N).

    The Dice sums run over the whole volume of a sample (not per slice): one overlap ratio per
    organ per scan, as the metric is defined. Keep ``smooth`` tiny (MONAI's default 1e-5).
    ``weights`` (B, N, ...) or None: per-voxel weights; a weight of 0 takes a voxel out of both
    terms, BCE is weighted and divided by the voxel count (so heavier voxels add loss), or with
    ``region_mean`` by the count of voxels of weight > 0 (a channel supervised in a region only
    gets that region's mean, not one diluted by the crop).
    """
    logits = logits.float()
    dims = tuple(range(2, logits.dim()))
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weights is not None:
        keep = (weights > 0).to(p.dtype)
        inter = (p * target * keep).sum(dims)
        denom = (p * keep).sum(dims) + (target * keep).sum(dims)
        bce = (bce * weights).sum(dims) / keep.sum(dims).clamp(min=1.0) if region_mean else (bce * weights).mean(dims)
    else:
        inter = (p * target).sum(dims)
        denom = p.sum(dims) + target.sum(dims)
        bce = bce.mean(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    return dice, bce


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def partial_mask_loss(logits: Tensor, target: Tensor, annotated: Tensor, dice_weight: float = 1.0,
                      bce_weight: float = 1.0, smooth: float = 1e-5,
                      weights: Tensor | None = None, region_mean: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dice, bce) over annotated (sample, channel) pairs.

    logits (B, N, ...), target (B, N, ...) on the same grid, annotated (B, N) bool. BCE counts
    for every annotated pair; Dice only where the target is present in the crop: on an absent
    target Dice can only push the channel down, and it drove the first demo model's kidney
    tumour and cyst channels to logits of -40..-60 where no term brings them back.
    """
    dice, bce = dice_bce_per_channel(logits, target, smooth, weights, region_mean)
    present = presence(target) > 0
    d = masked_mean(dice, annotated & present)
    b = masked_mean(bce, annotated)
    return dice_weight * d + bce_weight * b, d, b


def presence(target: Tensor) -> Tensor:
    """(B, N, ...) -> (B, N): 1 where the channel has any voxel."""
    return target.flatten(2).amax(-1)


def class_bce(class_logits: Tensor, target_presence: Tensor, annotated: Tensor) -> Tensor:
    """Stage 1: MLP presence logit of query i vs 'class i is in this crop'."""
    bce = F.binary_cross_entropy_with_logits(class_logits.float(), target_presence, reduction="none")
    return masked_mean(bce, annotated)


def cosine_class_bce(cos_logits: Tensor, target_presence: Tensor, annotated: Tensor) -> Tensor:
    """Stage 2: BCE on the cosine-similarity class probabilities p(j | q_i) = softmax_j(cos/tau).

    Row i's target is one-hot at j = i when class i is in the crop and all-zero otherwise; only
    rows of annotated classes count. cos_logits (B, N, K) with K >= N text rows.
    """
    b, n, k = cos_logits.shape
    p = cos_logits.float().softmax(-1).clamp(1e-6, 1 - 1e-6)
    eye = torch.eye(n, k, device=p.device, dtype=p.dtype)
    target = eye.unsqueeze(0) * target_presence[:, :, None]
    bce = F.binary_cross_entropy(p, target, reduction="none").mean(-1)  # (B, N)
    return masked_mean(bce, annotated)


@dataclass
class LossWeights:
    dice: float = 1.0
    bce: float = 1.0
    cls: float = 1.0
    deep: float = 1.0  # weight of each kMMM layer's deep-supervision term
    dice_smooth: float = 1e-5  # see dice_bce_per_channel
    synthetic: float = 0.3  # weight of host_rejection (organ logits inside tumours and synthetic lesions)
    # Share of the run over which that weight ramps up linearly from 0: organs first, rejection
    # after (at full weight from step 0, a fine-tune on new phantoms lost liver, spleen and
    # kidneys within 200 steps: the features could not yet tell a lesion from the organ).
    synthetic_ramp: float = 0.0
    # 0: tumour channels share one Dice/BCE mean with the organs, where one lesion present in a
    # crop weighs ~1/25 of the Dice term. w > 0: the tumour channels' Dice and BCE are averaged
    # on their own and added with weight w (the seen tumours then weigh as much as all organs).
    tumor_group: float = 0.0
    # None: tumour channels are supervised on the whole crop. k >= 0: only inside their parent
    # organs' envelope dilated by k voxels (tumor_regions), the only place inference reads
    # them (tumours are gated by the filled parent envelope). On the whole crop one kernel must
    # also stay off every fat, fluid and bowel voxel that looks like a lesion; on 0.6's frozen
    # pixel embedding a kernel fitted that way separated held-out lesions from their parent
    # tissue at AUROC 0.66-0.76 (kidney cyst, kidney tumour), fitted inside the envelope
    # 0.78-0.86, liver tumour 0.40 -> 0.74.
    tumor_envelope_voxels: int | None = None

    def __post_init__(self) -> None:
        k = self.tumor_envelope_voxels
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise ValueError(f"loss.tumor_envelope_voxels must be a whole number of voxels >= 0 or null, got {k!r}")


def dsm_loss(out: dict, label: Tensor, annotated: Tensor, n_classes: int, stage: int,
             w: LossWeights | None = None, is_tumor: Tensor | None = None,
             stats: dict | None = None, progress: float = 1.0,
             tumor_parents: dict[int, tuple[int, ...]] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Total DSM loss for one batch and its parts (floats for logging).

    out: model output dict (mask_logits (B,N,...), layer_logits list of (B,N_o,...), and
    class_logits (Stage 1) or class_cos_logits (Stage 2)); label (B,2,...); annotated (B,C);
    is_tumor (C,) bool per catalog channel (needed when the batch holds synthetic lesions).
    ``stats``: if given, filled with "present" (B, N) bool, "max_prob" (B, N) float — the
    highest probability of each channel in each crop — for the dying-channel check, and
    "target_prob" (B, N): the mean probability on the channel's target voxels.
    ``progress``: step / total steps, for the ramp of the rejection weight.
    ``tumor_parents``: catalog channel -> class-map values of its parent organs, for every
    tumour channel; needed when ``w.tumor_envelope_voxels`` is set (then a tumour channel's
    mask terms count inside ``tumor_regions`` only, and not at all in a crop without its
    parent organ).
    """
    w = w or LossWeights()
    w_reject = w.synthetic * (min(1.0, progress / w.synthetic_ramp) if w.synthetic_ramp > 0 else 1.0)
    target = multi_hot(label, n_classes)
    masks = out["mask_logits"]
    n = masks.shape[1]
    tgt, ann = target[:, :n], annotated[:, :n]
    weights = None
    if is_tumor is not None:
        weights = voxel_weights(label, is_tumor.to(label.device))
    wn = None if weights is None else weights[:, :n]
    in_region, mask_ann = False, ann
    if w.tumor_envelope_voxels is not None and is_tumor is not None and bool(is_tumor[:n].any()):
        if tumor_parents is None:
            raise ValueError("loss.tumor_envelope_voxels needs the tumour channels' parents (tumor_parents)")
        channels = [c for c in range(n) if bool(is_tumor[c])]
        values = {i: (*tumor_parents[c], c + 1) for i, c in enumerate(channels)}
        region = tumor_regions(label, values, w.tumor_envelope_voxels)
        full = torch.ones_like(masks[:, :n], dtype=torch.float32) if wn is None else wn.clone()
        full[:, channels] = full[:, channels] * region.to(full.dtype)
        wn, in_region = full, True
        mask_ann = ann.clone()  # mask terms only; presence and the class loss keep every annotated pair
        mask_ann[:, channels] &= region.flatten(2).any(-1)
    if w.tumor_group > 0 and is_tumor is not None and bool(is_tumor[:n].any()):
        tum = is_tumor[:n].to(ann.device)
        loss, dice, bce = partial_mask_loss(masks, tgt, mask_ann & ~tum, w.dice, w.bce, w.dice_smooth, wn, in_region)
        t_loss, t_dice, t_bce = partial_mask_loss(masks, tgt, mask_ann & tum, w.dice, w.bce, w.dice_smooth, wn,
                                                  in_region)
        loss = loss + w.tumor_group * t_loss
        parts = {"dice": dice.item(), "bce": bce.item(), "tumor_dice": t_dice.item(), "tumor_bce": t_bce.item()}
    else:
        loss, dice, bce = partial_mask_loss(masks, tgt, mask_ann, w.dice, w.bce, w.dice_smooth, wn, in_region)
        parts = {"dice": dice.item(), "bce": bce.item()}
    pres = presence(tgt)
    if stats is not None:
        with torch.no_grad():
            stats["present"] = (pres > 0) & ann
            stats["max_prob"] = masks.detach().float().flatten(2).amax(-1).sigmoid()
            # mean probability on the channel's own voxels: a channel that fires elsewhere in
            # the crop has a high max_prob and still misses its class
            prob = masks.detach().float().sigmoid().flatten(2)
            t = tgt.flatten(2).float()
            stats["target_prob"] = (prob * t).sum(-1) / t.sum(-1).clamp(min=1.0)
    if stage == 1:
        c = class_bce(out["class_logits"], pres, ann)
    else:
        c = cosine_class_bce(out["class_cos_logits"], pres, ann)
    loss = loss + w.cls * c
    parts["cls"] = c.item()
    layers = out.get("layer_logits") or []
    n_organ = layers[0].shape[1] if layers else (int((~is_tumor).sum()) if is_tumor is not None else n)
    reject = host_rejection(masks[:, :n_organ], label) if w_reject else None
    if reject is not None:
        loss = loss + w_reject * reject
        parts["reject"] = reject.item()
    deep_total = torch.zeros((), device=masks.device)
    for k, r in enumerate(layers):
        no = r.shape[1]
        up = F.interpolate(r.float(), size=masks.shape[2:], mode="trilinear", align_corners=False)
        lw = None if weights is None else weights[:, :no]
        l, _, _ = partial_mask_loss(up, target[:, :no], annotated[:, :no], w.dice, w.bce, w.dice_smooth, lw)
        deep_total = deep_total + l
        if k == len(layers) - 1 and w_reject:
            # Finest layer only (stride 4, which the prompt reads): at coarser strides a lesion is
            # a fraction of a cell, and rejecting it there means rejecting the organ (an exposure
            # run with the term on every layer at weight 1 lost every organ within 20 steps).
            rj = host_rejection(up, label)
            if rj is not None:
                deep_total = deep_total + w_reject * rj
    loss = loss + w.deep * deep_total
    parts["deep"] = deep_total.item()
    parts["loss"] = loss.item()
    return loss, parts
