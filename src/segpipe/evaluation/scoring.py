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
from segpipe.evaluation.metrics import ConfusionMatrix, confusion_counts
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
    # On a GPU, images of one original size are upsampled and counted together, one row of counts each (fewer
    # launches); on a CPU one at a time, whose upsampled logits stay in cache (a batch of them made the metrics
    # 27% of the prediction instead of 1%: benchmarks/RESULTS.md).
    together = runtime.device.type != "cpu"
    for images, masks, index in batches.iterate():
        logits = predict_logits(model, images, runtime)
        working.update(logits.argmax(dim=1), masks)
        for positions, truths in _native_truths(split, index, runtime.device, together):
            upsampled = logits if len(positions) == len(index) else logits[torch.as_tensor(positions, device=logits.device)]
            if truths.shape[-2:] != upsampled.shape[-2:]:
                upsampled = F.interpolate(upsampled, size=truths.shape[-2:], mode="bilinear", align_corners=False)
            counts = confusion_counts(upsampled.argmax(dim=1), truths, num_classes, ignore_index, per_sample=True)
            native.add(counts.sum(dim=0))
            per_image[torch.as_tensor(index[positions], device=per_image.device)] = counts[:, :-1].reshape(-1, num_classes, num_classes)
    native.all_reduce()
    working.all_reduce()
    return TestScores(native, working, per_image.cpu().numpy())


def _native_truths(split, index: np.ndarray, device: torch.device, together: bool):
    """(positions in the batch, their original masks stacked on the device) for each original
    size among the batch's rows (`together`), else for each row: from the memory map in one copy, or already there when the
    split is held on the GPU (tensors, which numpy cannot take from a GPU)."""
    if split.native_shapes is None:
        split.native_mask(int(index[0]))  # raises the error that says how to make them
    shapes = split.native_shapes[index]
    groups = ([np.flatnonzero((shapes == shape).all(axis=1)) for shape in sorted({tuple(s) for s in shapes.tolist()})]
              if together else [np.array([k]) for k in range(len(index))])
    for positions in groups:
        masks = [split.native_mask(int(row)) for row in index[positions]]
        if isinstance(masks[0], torch.Tensor):
            yield positions, torch.stack(masks).to(device)
        else:
            yield positions, torch.from_numpy(np.stack(masks)).to(device)
