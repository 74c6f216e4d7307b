"""95% confidence intervals for the test scores, by the bootstrap over test images.

A test set is a sample of images, so its mIoU is an estimate: resampling the
images with replacement, and scoring each resample the way the headline is
scored (one confusion matrix summed over its images, reduced by
metrics.scores), shows how far that estimate could move with another sample of
the same size. Pixels within an image are not independent, so images, not
pixels, are what is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.evaluation.metrics import scores

# The scores an interval is given for: every one is a reduction of the summed matrix.
SCORED = ("miou", "f1", "pixel_accuracy", "mean_class_accuracy")
# Fixed, so that the same results give the same report (a cached output) every time.
SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float
    samples: int


def resample_indices(num_images: int, samples: int, seed: int = SEED) -> np.ndarray:
    """(samples, num_images) image indices, each row drawn with replacement."""
    return np.random.default_rng(seed).integers(0, num_images, size=(samples, num_images))


def resampled_scores(per_image: np.ndarray, indices: np.ndarray, class_iou: bool = False) -> dict[str, np.ndarray]:
    """Each headline score of every resample (one row of `indices`): the per-image
    matrices of its images summed, then reduced by metrics.scores. A score a
    resample cannot define (say, no labelled pixel at all) is nan. With class_iou,
    each class's IoU too, as "iou/<class index>"."""
    # float64 holds pixel counts exactly (below 2**53) and lets the product run on BLAS.
    flat = np.asarray(per_image, dtype=np.float64).reshape(len(per_image), -1)
    num_classes = per_image.shape[-1]
    # How often each image was drawn, times its matrix: every resample's summed matrix at once.
    draws = np.stack([np.bincount(row, minlength=len(per_image)) for row in indices]).astype(np.float64)
    matrices = (draws @ flat).reshape(len(indices), num_classes, num_classes)
    classes = [str(c) for c in range(num_classes)]
    names = [*SCORED, *([f"iou/{c}" for c in classes] if class_iou else [])]
    values = {name: np.full(len(indices), np.nan) for name in names}
    for k, matrix in enumerate(matrices):
        reduced = scores(matrix, classes)
        for name in SCORED:
            if reduced[name] is not None:
                values[name][k] = reduced[name]
        if class_iou:
            for c in classes:
                if reduced["per_class"][c]["iou"] is not None:
                    values[f"iou/{c}"][k] = reduced["per_class"][c]["iou"]
    return values


def percentile_interval(values: np.ndarray, confidence: float, samples: int) -> Interval | None:
    """The central `confidence` share of the resampled values (the percentile method)."""
    defined = values[np.isfinite(values)]
    if not len(defined):
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return Interval(round(float(low), 6), round(float(high), 6), confidence, samples)


def bootstrap_intervals(per_image: np.ndarray, samples: int, confidence: float = 0.95,
                        seed: int = SEED) -> dict[str, Interval | None]:
    """An interval for each of SCORED from `samples` resamples of the test images;
    empty when samples is 0 (report.bootstrap_samples: 0 turns them off) or there
    are no images."""
    if samples <= 0 or not len(per_image):
        return {}
    values = resampled_scores(per_image, resample_indices(len(per_image), samples, seed))
    return {name: percentile_interval(values[name], confidence, samples) for name in SCORED}


def class_iou_intervals(per_image: np.ndarray, classes: list[str], samples: int, confidence: float = 0.95,
                        seed: int = SEED) -> dict[str, Interval | None]:
    """An interval for each class's IoU, from the same resamples as bootstrap_intervals; empty when samples is 0."""
    if samples <= 0 or not len(per_image):
        return {}
    values = resampled_scores(per_image, resample_indices(len(per_image), samples, seed), class_iou=True)
    return {name: percentile_interval(values[f"iou/{i}"], confidence, samples) for i, name in enumerate(classes)}
