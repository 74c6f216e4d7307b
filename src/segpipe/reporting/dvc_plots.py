"""The test results as tables DVC's plot templates draw (`dvc plots show`, `dvc plots diff`).

Each file is a list of records, one per bar or cell, so that DVC can put the
records of several revisions side by side:

    metrics/per_class.json            {"class", "iou", "f1", "accuracy", "pixels"} per class
    metrics/confusion_normalized.json {"true_class", "predicted_class", "rate", "pixels"} per cell

DVC's own confusion templates count rows, one per sample: with one row per pixel
they would not scale, so the matrix is written already reduced, each true class's
row summing to 1, and .dvc/plots/heatmap.json draws it.
"""

from __future__ import annotations

import numpy as np


def row_rates(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: where the pixels of one true class went (a class
    with no pixels keeps a row of zeros)."""
    counts = np.asarray(matrix, dtype=np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def per_class_records(per_class: dict, matrix: np.ndarray) -> list[dict]:
    """metrics.scores' per_class, in class order, with each class's labelled test pixels."""
    pixels = np.asarray(matrix).sum(axis=1)
    return [{"class": name, **values, "pixels": int(pixels[i])} for i, (name, values) in enumerate(per_class.items())]


def confusion_records(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """The row-normalised confusion matrix, one record per (true, predicted) cell."""
    rates, counts = row_rates(matrix), np.asarray(matrix)
    return [{"true_class": truth, "predicted_class": predicted, "rate": round(float(rates[i, j]), 6),
             "pixels": int(counts[i, j])}
            for i, truth in enumerate(classes) for j, predicted in enumerate(classes)]
