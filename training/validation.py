"""Validation Dice during training: sliding-window inference on preprocessed cases."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference

from model.network import DSMNet

from .losses import multi_hot
from .metrics import dice_score


@torch.no_grad()
def predict_volume(net: DSMNet, image: torch.Tensor, roi: Sequence[int], overlap: float,
                   sw_batch_size: int = 1) -> torch.Tensor:
    """(1, 1, X, Y, Z) preprocessed image -> (1, K, X, Y, Z) class probabilities."""

    def patch(x: torch.Tensor) -> torch.Tensor:
        return net.semantic_probs(net(x))

    return sliding_window_inference(image, roi_size=tuple(roi), sw_batch_size=sw_batch_size, predictor=patch,
                                    overlap=overlap, mode="gaussian")


@torch.no_grad()
def validate(net: DSMNet, dataset, roi: Sequence[int], overlap: float, device: torch.device, n_classes: int) -> float:
    """Mean Dice over (case, class) pairs with non-empty ground truth among annotated classes
    the model outputs, thresholded at 0.5 (no post-processing)."""
    scores = []
    for i in range(len(dataset)):
        s = dataset[i]
        image = torch.as_tensor(s["image"]).unsqueeze(0).to(device).float()
        probs = predict_volume(net, image, roi, overlap)[0]
        target = multi_hot(torch.as_tensor(s["label"]).unsqueeze(0).to(device), n_classes)[0]
        ann = torch.as_tensor(s["annotated"]).bool()
        for c in range(min(probs.shape[0], n_classes)):
            if ann[c] and target[c].any():
                scores.append(dice_score(probs[c] > 0.5, target[c] > 0.5))
    return float(sum(scores) / len(scores)) if scores else float("nan")
