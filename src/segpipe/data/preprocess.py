"""Validate every raw pair, resize it once, split deterministically, store uint8 arrays."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.config import PreprocessParams, SplitParams
from segpipe.data.processed import SPLITS, ProcessedSplit, write_summary
from segpipe.data.raw import Pair, RawDataset
from segpipe.errors import SegpipeError, shortlist

# How many bad files an error message lists before it says "and N more".
_SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class Sample:
    pair: Pair
    image: np.ndarray | None
    mask: np.ndarray | None
    problem: str | None = None


def load_sample(raw: RawDataset, pair: Pair, size: int) -> Sample:
    """Read, validate and resize one pair; a bad pair comes back with `problem` set."""
    image_path, mask_path = raw.root / pair.image, raw.root / pair.mask
    try:
        with Image.open(image_path) as img:
            image = img.convert("RGB")
        with Image.open(mask_path) as msk:
            if msk.mode not in ("L", "P"):
                return Sample(pair, None, None, f"{mask_path}: mask mode {msk.mode!r}; masks must be single-channel class indices (L or P)")
            mask = msk.copy()
    except (OSError, UnidentifiedImageError) as exc:
        return Sample(pair, None, None, f"unreadable: {exc}")
    if image.size != mask.size:
        return Sample(
            pair, None, None,
            f"{image_path} is {image.size[0]}x{image.size[1]} but {mask_path} is {mask.size[0]}x{mask.size[1]}; "
            "image and mask must be the same size",
        )
    labels = np.asarray(mask)
    bad = np.unique(labels[(labels >= len(raw.classes)) & (labels != raw.ignore_index)])
    if bad.size:
        return Sample(
            pair, None, None,
            f"{mask_path}: labels {bad.tolist()[:10]} out of range; valid are 0..{len(raw.classes) - 1} "
            f"and {raw.ignore_index} (ignore)",
        )
    resized_image = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    # Nearest keeps labels exact: no blending of class indices or of the ignore label.
    resized_mask = np.asarray(mask.resize((size, size), Image.NEAREST), dtype=np.uint8)
    return Sample(pair, resized_image, resized_mask)


def assign_splits(pairs: list[Pair], params: SplitParams) -> dict[str, list[Pair]]:
    """Official splits are kept; 'trainval' is divided into train and val; pairs
    without a split are divided three ways. Deterministic in (ids, seed)."""
    rng = np.random.default_rng(params.seed)
    result: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    free = sorted((p for p in pairs if p.split is None), key=lambda p: p.id)
    trainval = sorted((p for p in pairs if p.split == "trainval"), key=lambda p: p.id)
    for p in pairs:
        if p.split in SPLITS:
            result[p.split].append(p)

    if free:
        order = [free[i] for i in rng.permutation(len(free))]
        n_test = _share(len(order), params.test_fraction, parts=3)
        n_val = _share(len(order), params.val_fraction, parts=3)
        result["test"] += order[:n_test]
        result["val"] += order[n_test : n_test + n_val]
        result["train"] += order[n_test + n_val :]
    if trainval:
        order = [trainval[i] for i in rng.permutation(len(trainval))]
        n_val = _share(len(order), params.val_fraction, parts=2)
        result["val"] += order[:n_val]
        result["train"] += order[n_val:]
    for name in SPLITS:
        result[name].sort(key=lambda p: p.id)
    return result


def _share(total: int, fraction: float, parts: int) -> int:
    # At least one image whenever there are enough to go round the `parts` splits, so none is empty.
    return max(1, round(total * fraction)) if total >= parts else 0


def class_pixel_counts(masks: np.ndarray, num_classes: int) -> list[int]:
    counts = np.bincount(masks.reshape(-1), minlength=256)
    return counts[:num_classes].tolist()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(axis=0).round(6).tolist(), np.maximum(pixels.std(axis=0), 1e-3).round(6).tolist()


def preprocess(raw: RawDataset, params: PreprocessParams, out_dir: Path) -> dict:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        samples = list(pool.map(lambda p: load_sample(raw, p, params.size), raw.pairs))

    rejected = [s for s in samples if s.problem]
    if rejected and params.on_bad_sample == "error":
        lines = shortlist([f"  - {s.pair.id}: {s.problem}" for s in rejected], _SHOWN_PROBLEMS, separator="\n")
        raise SegpipeError(
            f"{len(rejected)} of {len(samples)} samples in {raw.root} are bad:\n{lines}"
            + "\nFix or remove these files, or set preprocess.on_bad_sample: skip in params.yaml to leave them out."
        )
    good = {s.pair.id: s for s in samples if not s.problem}
    if not good:
        raise SegpipeError(f"no usable samples in {raw.root}; check the download stage's output")

    splits = assign_splits([s.pair for s in good.values()], params.split)
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise SegpipeError(
            f"split(s) {', '.join(empty)} would be empty with {len(good)} usable samples; "
            "add more images or change preprocess.split fractions"
        )

    summary: dict = {"dataset": raw.dataset, "classes": raw.classes, "ignore_index": raw.ignore_index, "size": params.size}
    counts, pixels = {}, {}
    for name in SPLITS:
        chosen = [good[p.id] for p in splits[name]]
        split = ProcessedSplit(
            name=name,
            images=np.stack([s.image for s in chosen]),
            masks=np.stack([s.mask for s in chosen]),
            ids=[s.pair.id for s in chosen],
        )
        split.save(out_dir)
        counts[name] = len(split)
        pixels[name] = dict(zip(raw.classes, class_pixel_counts(split.masks, len(raw.classes))))
        if name == "train":
            summary["mean"], summary["std"] = channel_stats(split.images)

    total = {c: sum(pixels[s][c] for s in SPLITS) for c in raw.classes}
    labelled = max(1, sum(total.values()))
    summary |= {
        "counts": counts,
        "class_pixels": pixels,
        "class_frequency": {c: round(n / labelled, 6) for c, n in total.items()},
        "rejected": [{"id": s.pair.id, "image": s.pair.image, "mask": s.pair.mask, "reason": s.problem} for s in rejected],
    }
    write_summary(out_dir, summary)
    return summary
