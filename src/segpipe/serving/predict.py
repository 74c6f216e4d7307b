"""`segpipe predict`: segment files, folders and globs of photos with a trained model.

For every image it writes, under --out:

    <name>_mask.png              class indices at the image's own size (palette PNG)
    <name>_overlay.png           the classes painted over the image in grey, with a legend
    <name>_prob_<k>_<class>.png  with --probabilities: P(class k) per pixel, 0-255 greyscale

and predictions.json, which maps every input to its outputs and lists the
inputs that failed. <name> is the input's path relative to the inputs' common
folder, without its extension; inputs that would share a name (img.jpg and
img.png, or D1/img.jpg on a case-insensitive disk) keep their extension in it
(img_jpg, img_png), so no output is ever written twice. An unreadable file is
listed and the others are still predicted.
"""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segpipe.atomic import atomic_file, write_json
from segpipe.data import IGNORE_INDEX
from segpipe.data.images import EXTENSIONS, BadImageFile, read_photo
from segpipe.errors import SegpipeError, shortlist, warn
from segpipe.progress import progress_bar
from segpipe.reporting.overlay import PALETTE, overlay
from segpipe.serving.inference import Predictor, Scored, WindowPlan

MANIFEST = "predictions.json"


@dataclass
class Failure:
    input: str
    error: str


@dataclass
class PredictionRun:
    """What one `segpipe predict` did: outputs per input, and the inputs that failed."""

    predicted: list[dict] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def written(self) -> list[str]:
        return [path for entry in self.predicted for path in [entry["mask"], entry["overlay"], *entry["probabilities"]]]


# --- which files -----------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def collect_inputs(arguments: list[str], failed: list[Failure]) -> list[Path]:
    """Files as given, the images directly inside folders, and the images a glob matches
    (`**` recurses), each file once, in the order given. An argument that names
    nothing is a failure, not a stop."""
    files: list[Path] = []
    for argument in map(str, arguments):
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_image(p))
            why = f"folder holds no images ({', '.join(EXTENSIONS)})"
        elif path.is_file():
            found, why = [path], ""
        elif glob.has_magic(argument):
            found = sorted(p for p in map(Path, glob.glob(argument, recursive=True)) if _is_image(p))
            why = "matches no image files"
        else:
            found, why = [], "no such file or folder"
        if not found:
            failed.append(Failure(argument, f"{argument}: {why}"))
        files += found
    unique = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(files: list[Path]) -> dict[Path, Path]:
    """Each input's output name (without suffix) relative to --out: its folder relative
    to the common folder of all inputs, and its stem. Names that would collide,
    compared case-insensitively, take the extension too, then a number."""
    resolved = [path.resolve() for path in files]
    root = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    names = {path: p.parent.relative_to(root) / p.stem for path, p in zip(files, resolved)}
    for extend in (lambda path, name, k: name.with_name(f"{name.name}_{path.suffix.lstrip('.')}"),
                   lambda path, name, k: name.with_name(f"{name.name}_{k + 1}")):
        groups = defaultdict(list)
        for path, name in names.items():
            groups[str(name).casefold()].append(path)
        for paths in groups.values():
            if len(paths) > 1:
                for k, path in enumerate(paths):
                    names[path] = extend(path, names[path], k)
    if len({str(name).casefold() for name in names.values()}) < len(names):  # never write one output twice
        raise SegpipeError("inputs whose names collide even with their extensions and a number: rename them")
    return names


def read_in_batches(files: list[Path], predictor: Predictor, failed: list[Failure],
                    notes: dict[Path, str] | None = None) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Images that can share one forward pass (same working shape, scored whole), up to
    the batch size; an image scored in windows comes alone. Unreadable files are
    recorded as failures and skipped; an animated one's note (first frame only) goes in `notes`."""
    pending: list[tuple[Path, np.ndarray]] = []
    pending_key = None
    for path in files:
        try:
            image, note = read_photo(path)
        except BadImageFile as exc:
            failed.append(Failure(str(path), str(exc)))
            continue
        if note:
            warn(note)
            if notes is not None:
                notes[path] = note
        key = predictor.batch_key(image)
        if pending and (key is None or key != pending_key or len(pending) == predictor.batch_size):
            yield pending
            pending = []
        pending.append((path, image))
        pending_key = key
    if pending:
        yield pending


# --- what is written -------------------------------------------------------------------


def _save_png(image: Image.Image, path: Path) -> None:
    try:
        with atomic_file(path, "wb") as handle:
            image.save(handle, format="PNG")
    except OSError as exc:
        raise SegpipeError(f"{path}: cannot write ({exc}); choose another --out") from None


def palette_mask(mask: np.ndarray) -> Image.Image:
    image = Image.fromarray(mask, mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    return image


def _legend_font(size: int):
    return ImageFont.load_default(size=size)


def draw_legend(picture: np.ndarray, mask: np.ndarray, classes: list[str]) -> np.ndarray:
    """The classes in the mask with their colours, in a box at the top-left corner.
    The box takes at most half the width and half the height; an image too small
    for a legible one (text 8 px high) is left as it is."""
    present = [int(k) for k in np.unique(mask) if k != IGNORE_INDEX and k < len(classes)]
    labels = [(k, f"{classes[k]} (not painted)" if k == 0 else classes[k]) for k in present]
    height, width = picture.shape[:2]
    for size in range(max(8, min(height, width) // 40), 7, -1):
        font, pad = _legend_font(size), max(2, size // 3)
        row = size + pad
        text_width = max(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font) for _, text in labels)
        box = (int(3 * pad + size + text_width), pad + row * len(labels) + pad)
        if box[0] <= width // 2 and box[1] <= height // 2:
            break
    else:
        return picture
    canvas = Image.fromarray(picture).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((0, 0, box[0], box[1]), fill=(0, 0, 0, 170))
    for i, (k, text) in enumerate(labels):
        top = pad + i * row
        swatch = (pad, top, pad + size, top + size)
        draw.rectangle(swatch, outline=(255, 255, 255, 255)) if k == 0 else draw.rectangle(swatch, fill=(*PALETTE[k], 255))
        draw.text((2 * pad + size, top), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "class"


def write_outputs(image: np.ndarray, scored: Scored, name: Path, classes: list[str], probabilities: bool) -> dict:
    """The mask, the overlay and (asked for) the probability maps of one image."""
    mask = scored.mask()
    paths = {"mask": name.with_name(f"{name.name}_mask.png"), "overlay": name.with_name(f"{name.name}_overlay.png")}
    _save_png(palette_mask(mask), paths["mask"])
    _save_png(Image.fromarray(draw_legend(overlay(image, mask), mask, classes)), paths["overlay"])
    maps = []
    if probabilities:
        for k, p in enumerate(scored.probabilities()):
            maps.append(name.with_name(f"{name.name}_prob_{k}_{_safe(classes[k])}.png"))
            _save_png(Image.fromarray(np.round(p * 255).astype(np.uint8), mode="L"), maps[-1])
    return {"mask": str(paths["mask"]), "overlay": str(paths["overlay"]), "probabilities": [str(p) for p in maps],
            "size": list(image.shape[:2]), "working_size": list(scored.working_shape), "windows": scored.windows}


# --- the command -----------------------------------------------------------------------


def predict_images(model_path: Path, arguments: list[str], out_dir: Path, device: str = "auto", window: str = "auto",
                   overlap: float = 0.5, batch_size: int = 8, probabilities: bool = False) -> PredictionRun:
    from segpipe.device import runtime_for
    from segpipe.models.checkpoint import load_model_checkpoint

    checkpoint = load_model_checkpoint(model_path)
    plan = WindowPlan.parse(window, checkpoint.input_shape, overlap)
    predictor = Predictor(checkpoint, runtime_for(device, amp=True, channels_last=True), plan, batch_size, model_path)
    run = PredictionRun()
    files = collect_inputs(arguments, run.failed)
    if not files:
        raise SegpipeError(f"nothing to predict: {shortlist([f.error for f in run.failed], 5, '; ')}")
    names = output_names(files)
    notes: dict[Path, str] = {}
    with progress_bar(len(files), "predict", "image") as bar:  # logs get the list of written files instead
        for batch in read_in_batches(files, predictor, run.failed, notes):
            for (path, image), scored in zip(batch, predictor.score([image for _, image in batch])):
                entry = write_outputs(image, scored, out_dir / names[path], checkpoint.data.classes, probabilities)
                run.predicted.append({"input": str(path), **entry, **({"note": notes[path]} if path in notes else {})})
            bar.update(len(batch))
    try:
        write_json(out_dir / MANIFEST, {"model": str(model_path), "classes": checkpoint.data.classes,
                                        "predicted": run.predicted, "failed": [f.__dict__ for f in run.failed]})
    except OSError as exc:
        raise SegpipeError(f"{out_dir / MANIFEST}: cannot write ({exc}); choose another --out") from None
    return run
