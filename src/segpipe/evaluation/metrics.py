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


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int,
                     per_sample: bool = False) -> torch.Tensor:
    """(num_classes**2 + 1,) int64: the (true, predicted) pair counts, flattened, then the
    number of pixels whose label is out of range; (N, num_classes**2 + 1), one row per
    sample of the batch, with `per_sample`.

    The counts go into a vector of fixed size (index_add_): torch.bincount's output size
    depends on the largest label, which a GPU can only learn by a round trip to the host,
    and that was one synchronisation per image (328% of the prediction on an H200,
    benchmarks/RESULTS.md). Nothing here reads a value back; callers check the last
    (out-of-range) count once, at the end of a pass.

    Ignored pixels are counted in an extra bin 0 and dropped, rather than removed by
    boolean indexing first: that made a compacted copy of every pixel (and forces a
    device sync on CUDA), and cost more than the network's convolutions in evaluate.
    int32 is ample for the index: labels are uint8, so indices stay below 65,536."""
    if pred.device.type == "cpu" and not COUNT_AS_ON_A_GPU and ignore_index >= num_classes:
        return _host_confusion_counts(pred, target, num_classes, ignore_index, per_sample)
    bins = num_classes * num_classes + 2  # ignored, the pairs, out of range
    index = torch.where(target == ignore_index, 0, target.to(torch.int32) * num_classes + pred.to(torch.int32) + 1)
    counts = _device_counts(index.reshape(index.shape[0] if per_sample else 1, -1), bins)[:, 1:]
    return counts if per_sample else counts[0]


def _device_counts(rows: torch.Tensor, bins: int) -> torch.Tensor:
    """(len(rows), bins) counts of each row, without reading the device back: index_add_ into a fixed-size vector,
    row k counting into bins k * bins ... (k + 1) * bins - 1, labels out of range clamped into the last bin."""
    index = rows.long().clamp_(max=bins - 1)
    index += torch.arange(rows.shape[0], device=rows.device).unsqueeze(1) * bins
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand(index.numel())
    counts = torch.zeros(index.shape[0] * bins, dtype=torch.int64, device=index.device).index_add_(0, index.reshape(-1), ones)
    return counts.reshape(-1, bins)


# On a CPU there is no device to wait for, and bincount is the faster count (index_add_ takes a pass to clamp the
# index), on an index made in fewer passes (_host_confusion_counts). tests/test_host_syncs.py sets this to record, on the CPU, the ops
# a GPU pass issues (here, and in scoring.score_test, which then groups images as on a GPU).
COUNT_AS_ON_A_GPU = False


def _host_confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int,
                           per_sample: bool) -> torch.Tensor:
    """confusion_counts on a CPU, in the fewest passes over the pixels (they are what it costs at a photo's
    native size): the index true * C + predicted in one add, counted by bincount, with nothing masked. An ignored
    pixel's index lands in the C bins from ignore_index * C, a label out of range in those from its own label
    times C: both above the C * C pairs, so the ignored ones are taken out there."""
    index = torch.add(pred.long(), target, alpha=num_classes)
    rows = index.reshape(index.shape[0] if per_sample else 1, -1)
    pairs, ignored = num_classes * num_classes, ignore_index * num_classes
    counts = []
    for row in rows:
        try:
            found = torch.bincount(row, minlength=pairs)
        except RuntimeError:  # a negative label (bincount takes none): out of range, as above
            raise _out_of_range(num_classes, ignore_index) from None
        above = found[pairs:].sum() - found[ignored : ignored + num_classes].sum()
        counts.append(torch.cat([found[:pairs], above.reshape(1)]))
    return torch.stack(counts) if per_sample else counts[0]


def _refuse_out_of_range(outside: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    if int(outside):  # a label out of range is an error, never a count
        raise _out_of_range(num_classes, ignore_index)


def _out_of_range(num_classes: int, ignore_index: int) -> ValueError:
    return ValueError(f"labels outside 0..{num_classes - 1} (other than {ignore_index}, which is ignored)")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of (true, predicted) pixel pairs, checked
    at once for labels out of range (one read of the device: accumulate with
    ConfusionMatrix in loops, which checks once at the end)."""
    counts = confusion_counts(pred, target, num_classes, ignore_index)
    _refuse_out_of_range(counts[-1], num_classes, ignore_index)
    return counts[:-1].reshape(num_classes, num_classes)


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.outside = torch.zeros((), dtype=torch.int64, device=device)  # pixels labelled out of range, checked once

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.add(confusion_counts(pred, target, self.num_classes, self.ignore_index))

    def add(self, counts: torch.Tensor) -> None:
        """Add confusion_counts' vector (or the sum of its per-sample rows), without reading the device."""
        self.counts += counts[:-1].reshape(self.num_classes, self.num_classes)
        self.outside += counts[-1]

    def all_reduce(self) -> None:
        """Sum the counts of every process, once, at the end of an evaluation, and refuse
        labels out of range (the pass's one read of the device)."""
        all_reduce(self.counts)
        _refuse_out_of_range(self.outside, self.num_classes, self.ignore_index)

    def numpy(self) -> np.ndarray:
        _refuse_out_of_range(self.outside, self.num_classes, self.ignore_index)
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
