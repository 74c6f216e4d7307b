"""metrics/per_image.npz: every test image's own confusion matrix, at native resolution.

Evaluate writes it; the report ranks images by their IoU and resamples them for
confidence intervals. It grows with the test set times the classes squared (VOC:
1449 images x 21 x 21), so DVC caches it instead of git; the headline numbers stay
small JSON in git. Their sum is metrics/confusion_matrix.json, and load() checks it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe.atomic import atomic_file
from segpipe.errors import SegpipeError
from segpipe.evaluation.metrics import scores


@dataclass(frozen=True)
class PerImageResults:
    ids: list[str]              # the test split's pair ids, in its row order
    classes: list[str]
    matrices: np.ndarray        # (N, C, C) int64: rows the true class, columns the predicted one

    def save(self, path: str | Path) -> None:
        # np.savez writes zip entries with a fixed date: equal results give equal bytes,
        # so an unchanged evaluation does not re-run the report.
        buffer = io.BytesIO()
        np.savez_compressed(buffer, ids=np.array(self.ids, dtype=str), classes=np.array(self.classes, dtype=str),
                            matrices=np.asarray(self.matrices, dtype=np.int64))
        with atomic_file(path, "wb") as handle:
            handle.write(buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, summed: np.ndarray | None = None) -> "PerImageResults":
        """Read the file; with `summed` (metrics/confusion_matrix.json's matrix), check
        that the images add up to it, so that a stale file cannot pass for this run's."""
        try:
            with np.load(path, allow_pickle=False) as data:
                results = cls(data["ids"].tolist(), data["classes"].tolist(), data["matrices"])
        except (OSError, KeyError, ValueError) as exc:
            raise SegpipeError(f"{path}: cannot read the per-image results ({exc}); re-run the evaluate stage "
                               "(dvc repro evaluate)") from None
        if summed is not None and not np.array_equal(results.matrices.sum(axis=0), np.asarray(summed)):
            raise SegpipeError(f"{path} does not add up to the confusion matrix beside it: the two come from different "
                               "evaluations; re-run the evaluate stage (dvc repro -f evaluate)")
        return results

    def image_scores(self) -> list[dict]:
        """metrics.scores of each image on its own."""
        return [scores(matrix, self.classes) for matrix in self.matrices]

    def image_mious(self) -> list[float | None]:
        """Each image's own mIoU, over the classes in its mask or its prediction."""
        return [s["miou"] for s in self.image_scores()]

    def best_and_worst(self, count: int) -> tuple[list[int], list[int]]:
        """Rows of the `count` images to show: the best by their own mIoU (best first) and
        the worst (worst first), half each, the best getting the odd one; never the same
        image twice, and none without a defined score (no labelled pixel, nothing predicted)."""
        values = self.image_mious()
        ranked = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: (-values[i], i))
        count = min(count, len(ranked))
        best = ranked[: -(-count // 2)]
        worst = [i for i in reversed(ranked) if i not in best][: count // 2]
        return best, worst
