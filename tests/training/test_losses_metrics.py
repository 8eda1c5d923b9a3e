"""Partial-label losses and evaluation metrics on hand-made tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.catalog import load_catalog
from training.losses import (
    LossWeights,
    cosine_class_bce,
    dice_bce_per_channel,
    dsm_loss,
    multi_hot,
    partial_mask_loss,
    tumor_parent_values,
    tumor_regions,
)
from training.metrics import auroc, dice_score, fpr_at_tpr

CAT = load_catalog()


def test_organ_target_is_tissue_only_tumor_voxels_are_parent_negatives():
    label = torch.zeros(1, 2, 2, 2, 2, dtype=torch.uint8)
    liver, lt = CAT.by_name("Liver").index, CAT.by_name("Liver Tumor").index
    label[0, 0, 0, 0, 0] = liver
    label[0, 0, 1, 1, 1] = lt
    label[0, 1, 1, 1, 1] = liver  # parent map
    t = multi_hot(label, len(CAT))
    assert t.shape == (1, 45, 2, 2, 2)
    assert t[0, liver - 1].sum() == 1 and t[0, lt - 1].sum() == 1
    assert t[0, lt - 1, 1, 1, 1] == 1 and t[0, liver - 1, 1, 1, 1] == 0  # the tumour is not liver
    assert t.sum() == 2
    # ... also in every deep-supervision layer: the loss sees the same target there.
    logits = torch.zeros(1, 45, 2, 2, 2, requires_grad=True)
    out = {"mask_logits": logits, "layer_logits": [torch.zeros(1, 25, 1, 1, 1, requires_grad=True)],
           "class_cos_logits": torch.zeros(1, 45, 45)}
    ann = torch.ones(1, 45, dtype=torch.bool)
    loss, _ = dsm_loss(out, label, ann, len(CAT), stage=2)
    loss.backward()
    # Positive gradient (push down) on the liver channel at the tumour voxel.
    assert logits.grad[0, liver - 1, 1, 1, 1] > 0 and logits.grad[0, liver - 1, 0, 0, 0] < 0


def test_dice_counts_only_where_the_target_is_present():
    logits = torch.full((1, 2, 4, 4, 4), -3.0, requires_grad=True)
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1  # channel 0 present, channel 1 absent from the crop
    ann = torch.ones(1, 2, dtype=torch.bool)
    loss, dice, bce = partial_mask_loss(logits, target, ann)
    d, b = dice_bce_per_channel(logits, target)
    assert dice.item() == pytest.approx(d[0, 0].item())  # the absent channel's Dice is left out
    assert bce.item() == pytest.approx(b.mean().item())  # BCE counts for both
    loss.backward()
    # The absent channel still learns (BCE) but with a gradient that does not saturate it:
    # its push-down equals BCE's alone.
    logits2 = logits.detach().clone().requires_grad_(True)
    torch.nn.functional.binary_cross_entropy_with_logits(logits2[:, 1], target[:, 1]).div(2).backward()
    torch.testing.assert_close(logits.grad[:, 1], logits2.grad[:, 1])


def test_synthetic_lesion_voxels_are_host_negatives_and_ignored_by_tumor_channels():
    from training.losses import LossWeights, host_rejection, synthetic_lesions, voxel_weights

    liver, lt = CAT.by_name("Liver").index, CAT.by_name("Liver Tumor").index
    label = torch.zeros(1, 2, 2, 2, 2, dtype=torch.uint8)
    label[0, 0] = liver
    label[0, 0, 1, 1, 1] = 0
    label[0, 1, 1, 1, 1] = liver  # a synthetic lesion in the liver: class 0, host in the parent map
    assert synthetic_lesions(label).sum() == 1
    is_tumor = torch.tensor([e.is_tumor for e in CAT])
    w = voxel_weights(label, is_tumor)
    assert w[0, liver - 1, 1, 1, 1] == 1.0 and w[0, lt - 1, 1, 1, 1] == 0.0
    t = multi_hot(label, len(CAT))
    assert t[0, liver - 1, 1, 1, 1] == 0 and t[0, :, 1, 1, 1].sum() == 0  # never a positive
    # The rejection term: BCE of the highest organ logit, averaged over lesion voxels only.
    organ_logits = torch.full((1, 25, 2, 2, 2), -5.0)
    organ_logits[0, liver - 1, 1, 1, 1] = 3.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(3.0), torch.tensor(0.0))
    torch.testing.assert_close(host_rejection(organ_logits, label), expected)
    assert host_rejection(organ_logits, torch.zeros_like(label)) is None
    start = torch.zeros(1, 45, 2, 2, 2)
    start[0, liver - 1, 1, 1, 1] = 1.0  # the liver claims the lesion
    logits = start.requires_grad_(True)
    out = {"mask_logits": logits, "layer_logits": [], "class_cos_logits": torch.zeros(1, 45, 45)}
    loss, parts = dsm_loss(out, label, torch.ones(1, 45, dtype=torch.bool), len(CAT), 2,
                           LossWeights(dice=0.0, cls=0.0), is_tumor=is_tumor)
    loss.backward()
    g = logits.grad[0]
    assert g[lt - 1, 1, 1, 1] == 0  # tumour channels ignore the synthetic voxel
    spleen = CAT.by_name("Spleen").index
    # The host gets the crop-wide BCE push plus the lesion-normalised one (8 voxels, 1 lesion voxel).
    assert g[liver - 1, 1, 1, 1] > 5 * g[spleen - 1, 1, 1, 1] > 0
    assert parts["reject"] == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(1.0))))
    # Another organ claiming the lesion is pushed instead of the host.
    organ_logits[0, spleen - 1, 1, 1, 1] = 6.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(6.0), torch.tensor(0.0))
    torch.testing.assert_close(host_rejection(organ_logits, label), expected)


def test_unannotated_channels_get_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 6, 6, requires_grad=True)
    target = (torch.rand(2, 5, 6, 6, 6) > 0.7).float()
    annotated = torch.tensor([[True, False, True, False, True], [False, True, True, False, False]])
    loss, _, _ = partial_mask_loss(logits, target, annotated)
    loss.backward()
    g = logits.grad.flatten(2).abs().amax(-1)
    assert torch.all(g[~annotated] == 0)
    assert torch.all(g[annotated] > 0)


def test_unannotated_channel_content_does_not_change_the_loss():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, 4)
    target = (torch.rand(1, 3, 4, 4, 4) > 0.5).float()
    ann = torch.tensor([[True, False, True]])
    a, _, _ = partial_mask_loss(logits, target, ann)
    target2, logits2 = target.clone(), logits.clone()
    target2[:, 1] = 1 - target2[:, 1]
    logits2[:, 1] = 10.0
    b, _, _ = partial_mask_loss(logits2, target2, ann)
    assert torch.equal(a, b)


def test_dice_is_per_volume_not_per_slice():
    # Channel with prediction and truth in different slices: volume Dice uses global sums.
    logits = torch.full((1, 1, 2, 2, 2), -30.0)
    target = torch.zeros(1, 1, 2, 2, 2)
    logits[0, 0, 0] = 30.0  # predict slice 0 (4 voxels)
    target[0, 0, 0, :, :1] = 1  # truth: 2 voxels in slice 0
    target[0, 0, 1, :, :1] = 1  # and 2 in slice 1
    dice, _ = dice_bce_per_channel(logits, target, smooth=0.0)
    # volume Dice = 2*2 / (4 + 4) = 0.5 ; a per-slab mean would give (1 - 2*2/6 + 1 - 0)/2 = 0.667
    assert dice.item() == pytest.approx(0.5, abs=1e-6)


def test_cosine_bce_targets_and_masking():
    torch.manual_seed(2)
    cos = torch.randn(1, 3, 4, requires_grad=True)
    pres = torch.tensor([[1.0, 0.0, 1.0]])
    ann = torch.tensor([[True, True, False]])
    loss = cosine_class_bce(cos, pres, ann)
    loss.backward()
    assert torch.all(cos.grad[0, 2] == 0) and cos.grad[0, :2].abs().sum() > 0
    # A perfect query (p(i|i) = 1 for present class 0) contributes ~0.
    perfect = torch.tensor([[[50.0, 0, 0, 0]]])
    assert cosine_class_bce(perfect, torch.tensor([[1.0]]), torch.tensor([[True]])).item() < 1e-4


def test_dsm_loss_deep_supervision_reaches_every_layer():
    torch.manual_seed(3)
    label = torch.zeros(1, 2, 8, 8, 8, dtype=torch.uint8)
    label[0, 0, 2:6, 2:6, 2:6] = CAT.by_name("Liver").index
    ann = torch.zeros(1, 45, dtype=torch.bool)
    ann[0, : 25] = True
    layers = [torch.randn(1, 25, s, s, s, requires_grad=True) for s in (1, 2, 4)]
    out = {"mask_logits": torch.randn(1, 25, 8, 8, 8, requires_grad=True), "layer_logits": layers,
           "class_logits": torch.randn(1, 25, requires_grad=True)}
    loss, parts = dsm_loss(out, label, ann, 45, stage=1)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in layers)
    assert set(parts) == {"dice", "bce", "cls", "deep", "loss"}
    assert parts["loss"] == pytest.approx(loss.item())


def test_dice_score_known_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 voxels
    b[1:3] = True  # 8 voxels, 4 shared
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, a) == 1.0
    assert dice_score(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice_score(np.zeros_like(a), np.zeros_like(a)))


def test_auroc_known_values():
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) lose, (0.8 vs both) win -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert auroc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_fpr95_known_values():
    scores = np.r_[np.linspace(1.0, 0.81, 20), np.linspace(0.8, 0.01, 80)]
    labels = np.r_[np.ones(20), np.zeros(80)]
    assert fpr_at_tpr(scores, labels) == 0.0  # perfect separation
    # 19 of 20 positives above all negatives, the last positive below 8 negatives:
    s = np.r_[np.linspace(1.0, 0.9, 19), 0.5, np.linspace(0.89, 0.51, 8), np.linspace(0.4, 0.0, 12)]
    y = np.r_[np.ones(19), 1, np.zeros(8), np.zeros(12)]
    assert fpr_at_tpr(s, y, 0.95) == 0.0  # 19/20 = 95 % reached before any negative
    assert fpr_at_tpr(s, y, 1.0) == pytest.approx(8 / 20)
    assert fpr_at_tpr([0.2, 0.9], [1, 0]) == 1.0


def test_tumor_group_gives_a_lesion_the_weight_of_all_organs():
    # One liver, one liver tumour in the crop: in the shared mean the tumour channel is one Dice
    # pair among several; with tumor_group it is averaged on its own and added.
    label = torch.zeros(1, 2, 8, 8, 8, dtype=torch.uint8)
    label[0, 0, 1:7, 1:7, 1:7] = CAT.by_name("Liver").index
    label[0, 0, 3:5, 3:5, 3:5] = CAT.by_name("Liver Tumor").index
    label[0, 1, 3:5, 3:5, 3:5] = CAT.by_name("Liver").index
    n = len(CAT)
    ann = torch.ones(1, n, dtype=torch.bool)
    is_tumor = torch.tensor([e.is_tumor for e in CAT], dtype=torch.bool)
    t = CAT.by_name("Liver Tumor").index - 1

    def tumor_grad(group: float) -> tuple[float, dict]:
        torch.manual_seed(0)
        logits = torch.randn(1, n, 8, 8, 8, requires_grad=True)
        out = {"mask_logits": logits, "layer_logits": [], "class_cos_logits": torch.randn(1, n, n)}
        loss, parts = dsm_loss(out, label, ann, n, stage=2, w=LossWeights(tumor_group=group), is_tumor=is_tumor)
        loss.backward()
        return float(logits.grad[0, t].abs().sum()), parts

    shared, p0 = tumor_grad(0.0)
    grouped, p1 = tumor_grad(1.0)
    assert "tumor_dice" not in p0 and {"tumor_dice", "tumor_bce"} <= set(p1)
    # Liver and Liver Tumor are the present pairs: the tumour's Dice share goes from 1/2 to 1,
    # its BCE share from 1/45 to 1/20 (plus the organ mean of the other 25 channels).
    assert grouped > 1.5 * shared


def _liver_crop(with_liver: bool = True) -> torch.Tensor:
    """An 8^3 crop: a liver block with a liver tumour inside, and the spleen in a corner."""
    label = torch.zeros(1, 2, 8, 8, 8, dtype=torch.uint8)
    label[0, 0, 0:2, 0:2, 0:2] = CAT.by_name("Spleen").index
    if with_liver:
        label[0, 0, 3:7, 3:7, 3:7] = CAT.by_name("Liver").index
        label[0, 0, 4:6, 4:6, 4:6] = CAT.by_name("Liver Tumor").index
        label[0, 1, 4:6, 4:6, 4:6] = CAT.by_name("Liver").index
    return label


def test_tumor_regions_are_the_parent_envelope_dilated_in_voxels():
    label = _liver_crop()
    liver, tumor = CAT.by_name("Liver").index, CAT.by_name("Liver Tumor").index
    region = tumor_regions(label, {0: (liver, tumor)}, 0)[0, 0]
    assert region.shape == (8, 8, 8)
    assert region[3:7, 3:7, 3:7].all() and int(region.sum()) == 4**3  # liver tissue + its tumour, no spleen
    grown = tumor_regions(label, {0: (liver, tumor)}, 1)[0, 0]
    assert grown[2:8, 2:8, 2:8].all() and int(grown.sum()) == 6**3
    assert not grown[0:2, 0:2, 0:2].any()


@pytest.mark.parametrize("dims", [2, 3])
def test_tumor_regions_dilate_as_one_cube_max_pool(dims):
    """The dilation runs one 1-D pool per axis over the non-empty maps only (a quarter of a CPU
    Stage-2 step went into a 7^3 pool over every channel); the result is the cube pool's."""
    g = torch.Generator().manual_seed(3)
    shape = (3, 2, *(24,) * dims)
    label = torch.zeros(shape, dtype=torch.uint8)
    label[:, 0] = torch.randint(0, 30, shape[2:], generator=g).where(torch.rand(shape[2:], generator=g) < 0.01,
                                                                      torch.tensor(0, dtype=torch.int64)).to(torch.uint8)
    label[1] = 0  # a sample holding none of the classes
    label[2, 1] = label[2, 0]  # parent map: a tumour's parent
    parents = {0: (2, 3, 27), 1: (6, 26), 2: (14,), 3: (44,)}
    region = tumor_regions(label, parents, 3)
    cls, par = label[:, 0], label[:, 1]
    ref = torch.stack([torch.isin(cls, torch.tensor(v, dtype=torch.uint8)) | torch.isin(par, torch.tensor(v, dtype=torch.uint8))
                       for _, v in sorted(parents.items())], dim=1).float()
    pool = torch.nn.functional.max_pool3d if dims == 3 else torch.nn.functional.max_pool2d
    ref = pool(ref, 7, stride=1, padding=3) > 0
    assert region.dtype == torch.bool and torch.equal(region, ref)
    assert region[0].any() and not region[1].any()


def test_tumor_envelope_loss_reads_tumor_channels_only_inside_their_parent():
    n = len(CAT)
    ann = torch.ones(1, n, dtype=torch.bool)
    is_tumor = torch.tensor([e.is_tumor for e in CAT], dtype=torch.bool)
    t = CAT.by_name("Liver Tumor").index - 1
    spleen = CAT.by_name("Spleen").index - 1

    def grads(label: torch.Tensor, envelope: int | None) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(0)
        logits = torch.randn(1, n, 8, 8, 8, requires_grad=True)
        out = {"mask_logits": logits, "layer_logits": [], "class_cos_logits": torch.randn(1, n, n)}
        loss, parts = dsm_loss(out, label, ann, n, stage=2, w=LossWeights(tumor_envelope_voxels=envelope),
                               is_tumor=is_tumor, tumor_parents=tumor_parent_values(CAT))
        loss.backward()
        return logits.grad[0], parts

    g, _ = grads(_liver_crop(), 0)
    assert g[t, 3:7, 3:7, 3:7].abs().min() > 0  # every envelope voxel is supervised
    outside = torch.ones(8, 8, 8, dtype=torch.bool)
    outside[3:7, 3:7, 3:7] = False
    assert float(g[t][outside].abs().max()) == 0.0  # the spleen corner and the fat: no term
    assert float(g[spleen][outside].abs().sum()) > 0  # organ channels keep the whole crop
    g1, _ = grads(_liver_crop(), 1)
    assert g1[t, 2:8, 2:8, 2:8].abs().min() > 0 and float(g1[t, 0:2, 0:2, 0:2].abs().max()) == 0.0
    g_crop, _ = grads(_liver_crop(), None)  # the old rule: the whole crop
    assert g_crop[t][outside].abs().min() > 0
    # A crop without the liver: the liver tumour's channel has no mask term at all.
    g_none, _ = grads(_liver_crop(with_liver=False), 0)
    assert float(g_none[t].abs().max()) == 0.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tumor_envelope_voxels"):
            LossWeights(tumor_envelope_voxels=bad)
    with pytest.raises(ValueError, match="tumor_parents"):
        dsm_loss({"mask_logits": torch.zeros(1, n, 8, 8, 8), "layer_logits": [], "class_cos_logits": torch.zeros(1, n, n)},
                 _liver_crop(), ann, n, stage=2, w=LossWeights(tumor_envelope_voxels=0), is_tumor=is_tumor)


def test_region_mean_bce_is_the_mean_inside_the_region():
    logits = torch.zeros(1, 1, 4, 4, 4)
    target = torch.zeros(1, 1, 4, 4, 4)
    weights = torch.zeros(1, 1, 4, 4, 4)
    weights[..., :2] = 1.0  # half the crop
    _, diluted = dice_bce_per_channel(logits, target, weights=weights)
    _, regional = dice_bce_per_channel(logits, target, weights=weights, region_mean=True)
    assert math.isclose(float(regional), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(diluted), math.log(2) / 2, rel_tol=1e-6)
