"""Figures and the report: reports/report.md (figures beside it) and a
self-contained reports/report.html (figures embedded), from the files the
earlier stages wrote."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segpipe.overlay import PALETTE, overlay  # noqa: E402


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    png: bytes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def training_curves(history: list[dict]) -> Figure:
    epochs = [int(r["epoch"]) for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(epochs, [float(r["train_loss"]) for r in history], label="train loss")
    left.plot(epochs, [float(r["val_loss"]) for r in history], label="validation loss")
    left.set_xlabel("epoch"), left.legend(), left.set_title("loss")
    right.plot(epochs, [float(r["val_miou"] or 0) for r in history], label="validation mIoU")
    right.plot(epochs, [float(r["val_pixel_accuracy"] or 0) for r in history], label="validation pixel accuracy")
    right.set_xlabel("epoch"), right.set_ylim(0, 1), right.legend(), right.set_title("validation")
    return Figure("training_curves", "Training curves", _png(fig))


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Figure:
    counts = np.asarray(matrix, dtype=np.float64)
    # Row-normalised: each row shows where the pixels of one true class went.
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
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


def prediction_grid(images: np.ndarray, masks: np.ndarray, predictions: np.ndarray, ids: list[str], classes: list[str]) -> Figure:
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row in range(rows):
        panels = [(images[row], f"{ids[row]}"), (overlay(images[row], masks[row]), "truth"),
                  (overlay(images[row], predictions[row]), "prediction")]
        for col, (panel, title) in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_title(title, fontsize=9)
            axes[row, col].axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[i] / 255) for i in range(len(classes))]
    fig.legend(handles, classes, loc="lower center", ncol=min(len(classes), 6), frameon=False)
    fig.subplots_adjust(bottom=0.6 / rows)
    return Figure("test_predictions", "Test predictions", _png(fig))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _headline_rows(evaluation: dict, training: dict) -> list[tuple[str, str]]:
    return [
        ("test mIoU", _fmt(evaluation["miou"])),
        ("test F1 (Dice)", _fmt(evaluation["f1"])),
        ("test pixel accuracy", _fmt(evaluation["pixel_accuracy"])),
        ("test mean class accuracy", _fmt(evaluation["mean_class_accuracy"])),
        ("best validation mIoU", _fmt(training["best_val_miou"])),
        ("epochs", str(training["epochs"])),
        ("training time", f"{training['seconds']:.1f} s"),
        ("training throughput", f"{training['train_images_per_second']:.1f} images/s on {training['device']}"),
    ]


def render_markdown(title: str, evaluation: dict, training: dict, figures: list[Figure], figure_dir: str) -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _headline_rows(evaluation, training)]
    lines += ["", "## Per class", "", "| class | IoU | F1 | accuracy |", "|---|---|---|---|"]
    for name, s in evaluation["per_class"].items():
        lines.append(f"| {name} | {_fmt(s['iou'])} | {_fmt(s['f1'])} | {_fmt(s['accuracy'])} |")
    for figure in figures:
        lines += ["", f"## {figure.title}", "", f"![{figure.title}]({figure_dir}/{figure.name}.png)"]
    return "\n".join(lines) + "\n"


def render_html(title: str, evaluation: dict, training: dict, figures: list[Figure]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    per_class = [[name, _fmt(s["iou"]), _fmt(s["f1"]), _fmt(s["accuracy"])] for name, s in evaluation["per_class"].items()]
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        table(["metric", "value"], [list(r) for r in _headline_rows(evaluation, training)]),
        "<h2>Per class</h2>",
        table(["class", "IoU", "F1", "accuracy"], per_class),
    ]
    for figure in figures:
        data = base64.b64encode(figure.png).decode("ascii")
        sections += [f"<h2>{html.escape(figure.title)}</h2>", f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">']
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")
