"""The report's figures, drawn with matplotlib as PNG bytes."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segpipe.reporting.dvc_plots import row_rates  # noqa: E402
from segpipe.reporting.overlay import legend_colours, overlay  # noqa: E402


@dataclass(frozen=True)
class Figure:
    name: str     # file name without .png
    title: str
    png: bytes


@dataclass(frozen=True)
class Example:
    """One test image with its masks at the working resolution, and its own mIoU."""

    id: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    miou: float | None


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _column(history: list[dict], key: str) -> list[float]:
    """A column of metrics/train_history.csv; an empty cell (an undefined score) is a gap."""
    return [float(row[key]) if row.get(key) not in (None, "") else math.nan for row in history]


def training_curves(history: list[dict]) -> Figure:
    """Loss, validation scores and learning rate by epoch, each on its own axis."""
    epochs = [int(row["epoch"]) for row in history]
    fig, (loss, scores, lr) = plt.subplots(1, 3, figsize=(13, 3.5))
    loss.plot(epochs, _column(history, "train_loss"), marker=".", label="train loss")
    loss.plot(epochs, _column(history, "val_loss"), marker=".", label="validation loss")
    loss.set_title("loss")
    scores.plot(epochs, _column(history, "val_miou"), marker=".", label="validation mIoU")
    scores.plot(epochs, _column(history, "val_f1"), marker=".", label="validation F1")
    scores.set_ylim(0, 1), scores.set_title("validation scores")
    lr.plot(epochs, _column(history, "lr"), marker=".", color="tab:gray", label="learning rate")
    lr.set_title("learning rate"), lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss, scores, lr):
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("training_curves", "Training curves", _png(fig))


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    rates = row_rates(matrix)  # each row: where the pixels of one true class went
    size = 1.2 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if len(classes) <= 12:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center",
                        color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (rows sum to 1)")
    return Figure("confusion_matrix", "Confusion matrix", _png(fig))


def examples_figure(name: str, title: str, examples: list[Example], classes: list[str]) -> Figure:
    """Each example as image, truth and prediction, with the class legend beside them
    in the colours the overlays really show."""
    rows = len(examples)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row, example in enumerate(examples):
        score = "n/a" if example.miou is None else f"{example.miou:.3f}"
        panels = [(example.image, f"{example.id} (mIoU {score})"),
                  (overlay(example.image, example.truth), "truth"),
                  (overlay(example.image, example.prediction), "prediction")]
        for col, (panel, caption) in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_title(caption, fontsize=9)
            axes[row, col].axis("off")
    colours = legend_colours(len(classes)) / 255
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colours[i], edgecolor="black", linewidth=0.5)
               for i in range(len(classes))]
    # Class 0 and ignored pixels are left unpainted: they show the image's own grey.
    labels = [f"{classes[0]} (unpainted)", *classes[1:]]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="classes")
    fig.suptitle(title)
    fig.tight_layout()
    return Figure(name, title, _png(fig))
