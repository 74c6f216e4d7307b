"""Scoring a model on a split: the confusion matrix at the working resolution
(validation, during training), and against the original masks at their own size
(the test split, in evaluate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segpipe.data.batches import Batches
from segpipe.device import Runtime
from segpipe.distributed import all_reduce
from segpipe.evaluation.metrics import ConfusionMatrix, confusion_matrix
from segpipe.models.forward import predict_logits


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, num_classes: int, ignore_index: int, runtime: Runtime, loss_fn: nn.Module | None = None
) -> tuple[ConfusionMatrix, float | None]:
    """Confusion matrix over the split at the working resolution (reduced across
    processes) and the mean loss."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    loss_and_count = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    for images, masks, _ in batches.iterate():
        logits = predict_logits(model, images, runtime)
        matrix.update(logits.argmax(dim=1), masks)
        if loss_fn is not None:
            loss_and_count += torch.stack([loss_fn(logits, masks).double() * images.shape[0],
                                           torch.tensor(float(images.shape[0]), dtype=torch.float64, device=runtime.device)])
    matrix.all_reduce()
    all_reduce(loss_and_count)
    total_loss, count = loss_and_count.tolist()
    return matrix, (total_loss / count if count else None)


@dataclass
class TestScores:
    native: ConfusionMatrix     # against the original masks at their own resolution: the headline
    working: ConfusionMatrix    # against the stored masks at the working resolution
    per_image: np.ndarray       # (N, C, C) native confusion matrix of every image, for intervals and rankings


@torch.inference_mode()
def score_test(model: nn.Module, batches: Batches, num_classes: int, ignore_index: int, runtime: Runtime) -> TestScores:
    """Predict each test image at the working resolution, upsample the logits to
    the image's original size, and score against the original mask."""
    model.eval()
    split = batches.split
    native = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    working = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    # On the device until the end: one copy to the host, not one synchronisation per image.
    per_image = torch.zeros((len(split), num_classes, num_classes), dtype=torch.int64, device=runtime.device)
    for images, masks, index in batches.iterate():
        logits = predict_logits(model, images, runtime)
        working.update(logits.argmax(dim=1), masks)
        for k, row in enumerate(index):
            truth = _native_truth(split, row, runtime.device)
            upsampled = logits[k : k + 1]
            if truth.shape != upsampled.shape[-2:]:
                upsampled = F.interpolate(upsampled, size=truth.shape, mode="bilinear", align_corners=False)
            counts = confusion_matrix(upsampled.argmax(dim=1)[0], truth, num_classes, ignore_index)
            native.counts += counts
            per_image[row] = counts
    native.all_reduce()
    working.all_reduce()
    return TestScores(native, working, per_image.cpu().numpy())


def _native_truth(split, row: int, device: torch.device) -> torch.Tensor:
    """A test image's original mask on the device: from the memory map, or already there
    when the split is held on the GPU (a tensor, which numpy cannot take from a GPU)."""
    mask = split.native_mask(row)
    return mask.to(device) if isinstance(mask, torch.Tensor) else torch.tensor(mask, device=device)
