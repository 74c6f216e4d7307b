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
from segpipe.evaluation import metrics
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
    working = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    # Every image's counts (confusion_counts' rows), on the device until the end: one copy to the host, not one
    # synchronisation per image; the native matrix is their sum, taken once.
    per_image = torch.zeros((len(split), num_classes * num_classes + 1), dtype=torch.int64, device=runtime.device)
    # On a GPU, images of one original size are upsampled and counted together, one row of counts each (fewer
    # launches); on a CPU one at a time, whose upsampled logits stay in cache (a batch of them made the metrics
    # 27% of the prediction instead of 1%: benchmarks/RESULTS.md). tests/test_host_syncs.py takes the GPU's way on a CPU.
    together = runtime.device.type != "cpu" or metrics.COUNT_AS_ON_A_GPU
    for images, masks, index in batches.iterate():
        logits = predict_logits(model, images, runtime)
        working.update(logits.argmax(dim=1), masks)
        for take, rows, truths in _native_truths(split, index, runtime.device, together):
            upsampled = logits[take]
            if truths.shape[-2:] != upsampled.shape[-2:]:
                upsampled = F.interpolate(upsampled, size=truths.shape[-2:], mode="bilinear", align_corners=False)
            counts = confusion_counts(upsampled.argmax(dim=1), truths, num_classes, ignore_index, per_sample=True)
            per_image[torch.as_tensor(rows, device=per_image.device)] = counts
    native = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    native.add(per_image.sum(dim=0))
    native.all_reduce()
    working.all_reduce()
    return TestScores(native, working, per_image[:, :-1].reshape(-1, num_classes, num_classes).cpu().numpy())


def _native_truths(split, index: np.ndarray, device: torch.device, together: bool):
    """(which of the batch's logits, their rows in the split, their original masks stacked on the device) for each
    original size among the batch's rows (`together`: an index on the device, whose logits are gathered unless it
    is the whole batch), else for each row (a slice: its logits are a view). From the memory map in one copy, or
    already there when the split is held on the GPU (tensors, which numpy cannot take from a GPU)."""
    if split.native_shapes is None:
        split.native_mask(int(index[0]))  # raises the error that says how to make them
    if not together:
        for k, row in enumerate(index.tolist()):
            yield slice(k, k + 1), index[k : k + 1], _on(split.native_mask(row), device)[None]
        return
    shapes = split.native_shapes[index]
    for shape in sorted({tuple(s) for s in shapes.tolist()}):
        positions = np.flatnonzero((shapes == shape).all(axis=1))
        masks = torch.stack([_on(split.native_mask(int(row)), device) for row in index[positions]])
        take = slice(None) if len(positions) == len(index) else torch.as_tensor(positions, device=device)
        yield take, index[positions], masks


def _on(mask, device: torch.device) -> torch.Tensor:
    # torch.tensor copies the read-only memory map (from_numpy would warn that it cannot write to it).
    return mask.to(device) if isinstance(mask, torch.Tensor) else torch.tensor(mask, device=device)
