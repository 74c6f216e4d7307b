"""Losses by name (params: loss.name). Each maps (logits N,C,H,W; target N,H,W) to a
scalar and ignores pixels labelled `ignore_index`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from segpipe.errors import SegpipeError
from segpipe.registry import Registry


class SegmentationLoss(nn.Module):
    def __init__(self, num_classes: int, ignore_index: int, class_weights: list[float] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        weights = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        self.weighted = class_weights is not None

    def probabilities_and_targets(self, logits: torch.Tensor, target: torch.Tensor):
        """Softmax, one-hot target and the valid-pixel mask (N,1,H,W), all float32."""
        valid = (target != self.ignore_index).unsqueeze(1)
        safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
        one_hot = F.one_hot(safe_target, self.num_classes).permute(0, 3, 1, 2).float()
        probs = logits.float().softmax(dim=1)
        return probs, one_hot, valid.float()


class CrossEntropy(SegmentationLoss):
    def forward(self, logits, target):
        weight = self.class_weights if self.weighted else None
        return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=self.ignore_index)


class Dice(SegmentationLoss):
    """1 - soft Dice, averaged over classes (weighted by class_weights)."""

    smooth = 1.0

    def forward(self, logits, target):
        probs, one_hot, valid = self.probabilities_and_targets(logits, target)
        probs, one_hot = probs * valid, one_hot * valid
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)
        total = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        w = self.class_weights
        return 1 - (dice * w).sum() / w.sum()


class CrossEntropyDice(SegmentationLoss):
    def __init__(self, num_classes, ignore_index, class_weights=None):
        super().__init__(num_classes, ignore_index, class_weights)
        self.ce = CrossEntropy(num_classes, ignore_index, class_weights)
        self.dice = Dice(num_classes, ignore_index, class_weights)

    def forward(self, logits, target):
        return self.ce(logits, target) + self.dice(logits, target)


class _Regression(SegmentationLoss):
    """Mean error between softmax probabilities and the one-hot target over valid
    pixels; class weights weight each pixel by its true class."""

    def error(self, diff: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits, target):
        probs, one_hot, valid = self.probabilities_and_targets(logits, target)
        per_pixel = self.error(probs - one_hot).mean(dim=1, keepdim=True)
        safe_target = torch.where(target == self.ignore_index, torch.zeros_like(target), target)
        weights = self.class_weights[safe_target].unsqueeze(1) * valid
        return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-12)


class MAE(_Regression):
    def error(self, diff):
        return diff.abs()


class MSE(_Regression):
    def error(self, diff):
        return diff.square()


LOSSES: Registry[Callable[..., SegmentationLoss]] = Registry("loss.name", "loss", {
    "cross_entropy": CrossEntropy,
    "dice": Dice,
    "ce_dice": CrossEntropyDice,
    "mae": MAE,
    "mse": MSE,
})


def median_frequency_weights(class_pixels: list[int], presence_pixels: list[int]) -> list[float]:
    """SegNet's median-frequency balancing (Eigen and Fergus, 2015): the frequency of a
    class is its pixel count over the labelled pixels of the training images that
    contain it; its weight is the median of those frequencies over its own. A class
    with no pixels gets weight 0 (preprocess refuses such training data anyway)."""
    frequency = [c / p if p else 0.0 for c, p in zip(class_pixels, presence_pixels)]
    present = sorted(f for f in frequency if f > 0)
    if not present:
        raise SegpipeError("loss.class_weights: median_frequency needs labelled training pixels, and there are none")
    mid = len(present) // 2
    median = present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2
    return [median / f if f > 0 else 0.0 for f in frequency]


def resolve_class_weights(setting, num_classes: int, summary: dict) -> list[float] | None:
    """loss.class_weights as numbers: null, explicit weights, or median_frequency from preprocess's summary."""
    if setting is None:
        return None
    if setting == "median_frequency":
        classes = summary["classes"]
        return median_frequency_weights([summary["class_pixels"]["train"][c] for c in classes],
                                        [summary["train_presence_pixels"][c] for c in classes])
    if len(setting) != num_classes:
        raise SegpipeError(
            f"loss.class_weights has {len(setting)} values but the dataset has {num_classes} classes; "
            "give one weight per class, in the order of data/processed/summary.json's classes, or null"
        )
    return list(setting)


def create_loss(name: str, num_classes: int, ignore_index: int, class_weights: list[float] | None) -> SegmentationLoss:
    return LOSSES[name](num_classes, ignore_index, class_weights)
