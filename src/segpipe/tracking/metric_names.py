"""The names and order of the metrics a run records in MLflow.

MLflow's run page lists metrics in the order they were first logged, and its
chart view sorts them by name in sections named by the prefix before a "/".
So the validation and test mIoU are logged first of their kind, and the
figures a user rarely looks for first (per class, at the working resolution,
throughput, confidence bounds) sit under a prefix of their own, out of the way
of the headline ones: val_miou, val_f1, val_loss, train_loss, test_miou, test_f1, ...
"""

from __future__ import annotations

HEADLINE = ("miou", "f1", "pixel_accuracy", "mean_class_accuracy")
# Per-epoch columns of metrics/train_history.csv, headline first; anything else comes after them.
_EPOCH_FIRST = ("val_miou", "val_f1", "val_pixel_accuracy", "val_loss", "train_loss", "lr")
_EPOCH_RENAMED = {"images_per_second": "speed/images_per_second", "seconds": "speed/epoch_seconds"}


def epoch_metrics(row: dict) -> dict[str, float | None]:
    """One epoch of metrics/train_history.csv as MLflow metrics (the epoch is the step)."""
    values = {k: v for k, v in row.items() if k != "epoch"}
    ordered = {k: values[k] for k in _EPOCH_FIRST if k in values}
    ordered |= {_EPOCH_RENAMED.get(k, k): v for k, v in values.items() if k not in ordered}
    return ordered


# Validation scores whose best so far is logged beside the last at every epoch (MLflow charts both, one step apart).
_BEST_SO_FAR = ("val_miou", "val_f1", "val_pixel_accuracy")


def best_so_far(history: list[dict], epoch: int) -> dict[str, float]:
    """The best of each validation score over the epochs up to `epoch`, as best_so_far/<score>."""
    upto = [row for row in history if row["epoch"] <= epoch]
    best = {}
    for name in _BEST_SO_FAR:
        values = [float(row[name]) for row in upto if row.get(name) is not None]
        if values:
            best[f"best_so_far/{name}"] = max(values)
    return best


def training_summary_metrics(best_val_miou: float | None, seconds: float, images_per_second: float,
                             peak_gpu_memory_gib: float | None = None) -> dict[str, float | None]:
    """`peak_gpu_memory_gib` is None (not logged) off a GPU; MLflow's system/* metrics carry the rest."""
    return {"best_val_miou": best_val_miou, "speed/train_seconds": seconds, "speed/train_images_per_second": images_per_second,
            "speed/peak_gpu_memory_gib": peak_gpu_memory_gib}


def test_metrics(native: dict, working: dict) -> dict[str, float | None]:
    """The test scores (from metrics.scores): the native-resolution headline first,
    then the working-resolution ones and each class's under prefixes of their own."""
    flat = {f"test_{k}": native[k] for k in HEADLINE}
    flat |= {f"test_working_res/{k}": working[k] for k in HEADLINE}
    for name, per_class in native["per_class"].items():
        flat |= {f"test_per_class/{metric}_{name}": value for metric, value in per_class.items()}
    return flat


def interval_metrics(intervals: dict) -> dict[str, float]:
    """The bounds of the bootstrap confidence intervals (segpipe.evaluation.intervals.Interval by score)."""
    flat = {}
    for name, interval in intervals.items():
        if interval is not None:
            flat[f"test_ci95/{name}_low"] = interval.low
            flat[f"test_ci95/{name}_high"] = interval.high
    return flat
