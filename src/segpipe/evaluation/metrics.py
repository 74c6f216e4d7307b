"""Every metric comes from one confusion matrix.

The matrix is accumulated on the training device, can be summed across
processes once (all_reduce), and is stored with the results so any other
reduction can be recomputed later. Rows are the true class, columns the
predicted class; pixels labelled `ignore_index` are left out.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from segpipe.distributed import all_reduce


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of (true, predicted) pixel pairs.

    Ignored pixels are counted in an extra bin 0 and dropped, rather than removed by
    boolean indexing first: that made a compacted copy of every pixel (and forces a
    device sync on CUDA), and cost more than the network's convolutions in evaluate
    (benchmarks/RESULTS.md). int32 is ample: labels are uint8, so indices stay below 65,536."""
    index = torch.where(target == ignore_index, 0, target.to(torch.int32) * num_classes + pred.to(torch.int32) + 1)
    counts = torch.bincount(index.reshape(-1), minlength=num_classes * num_classes + 1)
    if counts.numel() > num_classes * num_classes + 1:  # a label out of range is an error, never a count
        raise ValueError(f"labels outside 0..{num_classes - 1} (other than {ignore_index}, which is ignored)")
    return counts[1:].reshape(num_classes, num_classes)


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def all_reduce(self) -> None:
        """Sum the counts of every process, once, at the end of an evaluation."""
        all_reduce(self.counts)

    def numpy(self) -> np.ndarray:
        return self.counts.cpu().numpy()


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def scores(matrix: np.ndarray, classes: list[str]) -> dict:
    """IoU, F1 (Dice) and accuracy (recall) per class and their macro means.

    A class that is absent from both the labels and the predictions has no
    defined score (0/0): it is reported as null and left out of the means.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(cm)
    support = cm.sum(axis=1)        # pixels of each true class
    predicted = cm.sum(axis=0)      # pixels predicted as each class
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = true_positive / (support + predicted - true_positive)
        f1 = 2 * true_positive / (support + predicted)
        accuracy = true_positive / support
    total = cm.sum()
    return {
        "miou": _nan_to_none(np.nanmean(iou) if np.isfinite(iou).any() else math.nan),
        "f1": _nan_to_none(np.nanmean(f1) if np.isfinite(f1).any() else math.nan),
        "pixel_accuracy": _nan_to_none(true_positive.sum() / total if total else math.nan),
        "mean_class_accuracy": _nan_to_none(np.nanmean(accuracy) if np.isfinite(accuracy).any() else math.nan),
        "per_class": {
            name: {"iou": _nan_to_none(iou[i]), "f1": _nan_to_none(f1[i]), "accuracy": _nan_to_none(accuracy[i])}
            for i, name in enumerate(classes)
        },
    }
