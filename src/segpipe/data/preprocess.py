"""Validate every raw pair, bring it to the working resolution once, split
deterministically, and stream uint8 arrays to disk.

Memory stays flat whatever the dataset's size: samples are decoded and resized a
few at a time by a pool of processes, one per core (preprocess.workers), and written
in order as they come, so the output is the same bytes whatever the count. The summary records what a
person needs before trusting a number: counts, per-class pixels, rejected files
and images that appear in more than one split.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from segpipe.config import PreprocessParams, SplitParams
from segpipe.data.images import (
    BadImageFile,
    image_size,
    mask_values,
    open_image,
    read_rgb,
    resize_labels,
    resize_rgb,
    turned_hint,
)
from segpipe.data.processed import SPLITS, SplitWriter, write_summary
from segpipe.data.raw import Pair, Problem, RawDataset
from segpipe.data.resolution import Resize
from segpipe.errors import SegpipeError, shortlist

# How many bad files an error message lists before it says "and N more".
_SHOWN_PROBLEMS = 20

T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class Sample:
    pair: Pair
    image: np.ndarray | None = None        # at the working resolution
    mask: np.ndarray | None = None         # at the working resolution
    native_mask: np.ndarray | None = None  # at the original resolution (test split only)
    digest: str | None = None              # of the decoded original image, for leak detection
    problem: Problem | None = None


def _bad(pair: Pair, raw: RawDataset, reason: str, unknown_values: list | None = None) -> Sample:
    return Sample(pair, problem=Problem(pair.id, str(raw.root / pair.image), str(raw.root / pair.mask), reason,
                                        unknown_values))


def load_sample(raw: RawDataset, pair: Pair, resize: Resize, min_side: int, keep_native: bool = False) -> Sample:
    """Read, validate and resize one pair; a bad pair comes back with `problem` set."""
    image_path, mask_path = raw.root / pair.image, raw.root / pair.mask
    try:
        image = read_rgb(image_path)
        with open_image(mask_path) as mask_file:
            if mask_file.mode not in ("1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I"):
                return _bad(pair, raw, f"{mask_path}: mask mode {mask_file.mode!r}; masks must be single-channel class "
                                       "indices (L or P)")
            labels = mask_values(mask_file)
    except BadImageFile as exc:
        return _bad(pair, raw, str(exc))
    height, width = image.shape[:2]
    if labels.shape != (height, width):
        turned = turned_hint((width, height), labels.shape[::-1])
        return _bad(pair, raw, f"{image_path} is {width}x{height} but {mask_path} is {labels.shape[1]}x{labels.shape[0]}; "
                               + (turned or "image and mask must be the same size"))
    if min(height, width) < min_side:
        return _bad(pair, raw, f"{image_path} is only {width}x{height}, below preprocess.min_side ({min_side} pixels); "
                               "remove it, or lower preprocess.min_side if such small images are intended")
    bad = np.unique(labels[(labels >= len(raw.classes)) & (labels != raw.ignore_index)])
    if bad.size:
        return _bad(pair, raw, f"{mask_path}: labels {bad.tolist()[:10]} out of range; valid are "
                               f"0..{len(raw.classes) - 1} and {raw.ignore_index} (ignore)", bad.tolist()[:10])
    labels = labels.astype(np.uint8)
    work_h, work_w = resize.shape_for(height, width)
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode()).hexdigest()
    return Sample(pair, resize_rgb(image, work_h, work_w), resize_labels(labels, work_h, work_w),
                  labels if keep_native else None, digest)


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, pool: Executor | None = None) -> Iterator[R]:
    """Like pool.map, in order, but with only a few results in flight, so memory
    stays flat however many items there are (Executor.map submits them all).
    Threads of this process unless given a `pool` (of processes)."""
    with (ThreadPoolExecutor(max_workers=workers) if pool is None else nullcontext(pool)) as running:
        pending: deque = deque()
        for item in items:
            pending.append(running.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# What each worker process of the pool loads samples from, set once when it starts (not sent with every pair).
_WORKER: dict = {}


def _start_worker(raw: RawDataset, resize: Resize, min_side: int) -> None:
    _WORKER.update(raw=raw, resize=resize, min_side=min_side)


def _load_in_worker(task: tuple[Pair, bool]) -> Sample:
    pair, keep_native = task
    return load_sample(_WORKER["raw"], pair, _WORKER["resize"], _WORKER["min_side"], keep_native)


def worker_count(setting: int) -> int:
    """preprocess.workers: 0 means one per core this process may use."""
    if setting:
        return setting
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SampleLoader:
    """Loads samples in order with `workers` processes (1: threads of this process, as
    decoding a small dataset is quicker than starting processes). Processes, because
    decoding and resizing hold the GIL for much of their time: threads alone kept one core
    busy. Spawned, not forked: the parent may hold torch's threads, which a fork copies
    in whatever state they were."""

    def __init__(self, raw: RawDataset, resize: Resize, min_side: int, workers: int):
        self.raw, self.resize, self.min_side, self.workers = raw, resize, min_side, workers
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(raw, resize, min_side))

    def load(self, pairs: list[Pair], keep_native: bool) -> Iterator[Sample]:
        if self.pool is None:
            load = lambda pair: load_sample(self.raw, pair, self.resize, self.min_side, keep_native)  # noqa: E731
            return bounded_map(load, pairs, os.cpu_count() or 1)
        return bounded_map(_load_in_worker, [(pair, keep_native) for pair in pairs], self.workers, self.pool)

    def __enter__(self) -> "SampleLoader":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


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


class _Statistics:
    """Pixel counts per class and split, image presence (for class balancing) and
    channel moments of the training images, accumulated as samples stream by."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.class_pixels = {name: np.zeros(num_classes, np.int64) for name in SPLITS}
        # Per class: labelled pixels of the training images that contain the class (median-frequency balancing).
        self.presence_pixels = np.zeros(num_classes, np.int64)
        self.channel_sum, self.channel_squares, self.pixel_count = np.zeros(3), np.zeros(3), 0

    def add(self, split: str, sample: Sample) -> None:
        counts = np.bincount(sample.mask.reshape(-1), minlength=256)[: self.num_classes]
        self.class_pixels[split] += counts
        if split == "train":
            self.presence_pixels[counts > 0] += counts.sum()
            pixels = sample.image.reshape(-1, 3).astype(np.float64) / 255.0
            self.channel_sum += pixels.sum(axis=0)
            self.channel_squares += np.square(pixels).sum(axis=0)
            self.pixel_count += len(pixels)

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.channel_sum / max(self.pixel_count, 1)
        std = np.sqrt(np.maximum(self.channel_squares / max(self.pixel_count, 1) - mean**2, 0.0))
        return mean.round(6).tolist(), np.maximum(std, 1e-3).round(6).tolist()


def find_leaks(digests: dict[str, list[tuple[str, str]]]) -> list[dict]:
    """Images whose content appears in more than one split."""
    leaks = []
    for digest, members in sorted(digests.items()):
        if len({split for _, split in members}) > 1:
            leaks.append({"sha1": digest, "ids": [i for i, _ in members], "splits": [s for _, s in members]})
    return leaks


def _problems_error(problems: list[Problem], total: int, root: Path) -> SegpipeError:
    lines = shortlist([f"  - {p.id}: {p.reason}" for p in problems], _SHOWN_PROBLEMS, separator="\n")
    shared = None
    if all(p.unknown_values for p in problems) and 2 * len(problems) >= total:
        shared = set.intersection(*(set(map(str, p.unknown_values)) for p in problems))
    if shared:  # one mapping problem behind most files: skipping them is no fix
        advice = (f"Every one of them holds the mask value(s) {', '.join(sorted(shared))}, which no class has: fix how the "
                  "masks are read, as the first line says (skipping would drop every such file).")
    elif len(problems) >= total:
        advice = "No sample is usable: fix the files or the dataset settings (skipping would leave nothing)."
    else:
        advice = "Fix or remove these files, or set preprocess.on_bad_sample: skip in params.yaml to leave them out."
    return SegpipeError(f"{len(problems)} of {total} samples in {root} are bad:\n{lines}\n{advice}")


def _missing_classes_error(classes: list[str], train_pixels: np.ndarray) -> SegpipeError | None:
    missing = [f"{name!r} (index {i})" for i, name in enumerate(classes) if train_pixels[i] == 0]
    if not missing:
        return None
    return SegpipeError(
        f"class {', '.join(missing)} has no pixels at all in the training split, so the model can never learn it and "
        "its scores would be meaningless. The likely cause is masks that code classes differently from how they are "
        "read: two-class masks saved as 0/255 need data.folder.values: [0, 255] (or data.folder.threshold: 128 for "
        "JPEG masks), and a value set as data.folder.ignore_value is never a class. If the class is simply absent "
        "from these images, remove it from data.folder.classes or add training images that show it."
    )


def bytes_to_write(raw: RawDataset, splits: dict[str, list[Pair]], resize: Resize) -> int:
    """What preprocess will write, from the images' headers: each image (3 bytes a pixel) and mask (1) at the
    working resolution, and the test masks at their own. Unreadable files count nothing (they are reported later)."""
    total = 0
    for name, pairs in splits.items():
        for pair in pairs:
            try:
                width, height = image_size(raw.root / pair.image)
            except BadImageFile:
                continue
            work_h, work_w = resize.shape_for(height, width)
            total += 4 * work_h * work_w + (height * width if name == "test" else 0)
    return total


def human_bytes(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def check_space(out_dir: Path, needed: int) -> None:
    """Stop before writing what cannot fit, with the figure and the space free."""
    probe = Path(out_dir)
    while not probe.exists():  # the folder is made when the first split is written
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise SegpipeError(f"preprocess would write about {human_bytes(needed)} to {out_dir.parent}, but only "
                           f"{human_bytes(free)} is free there: lower preprocess.resize.to (the working resolution), "
                           "or free space or move the project to a larger disk; nothing was written")


def preprocess(raw: RawDataset, params: PreprocessParams, out_dir: Path) -> dict:
    resize = Resize(params.resize.by, params.resize.to)
    splits = assign_splits(raw.pairs, params.split)
    check_space(out_dir, bytes_to_write(raw, splits, resize))
    stats = _Statistics(len(raw.classes))
    problems: list[Problem] = list(raw.problems)
    digests: dict[str, list[tuple[str, str]]] = {}
    counts = {}
    with SampleLoader(raw, resize, params.min_side, worker_count(params.workers)) as loader:
        for name in SPLITS:
            writer = SplitWriter(out_dir, name, native=name == "test")
            for sample in loader.load(splits[name], keep_native=name == "test"):
                if sample.problem:
                    problems.append(sample.problem)
                    continue
                writer.append(sample.pair.id, sample.image, sample.mask, sample.native_mask)
                stats.add(name, sample)
                digests.setdefault(sample.digest, []).append((sample.pair.id, name))
            writer.close()
            counts[name] = len(writer)

    total = len(raw.pairs) + len(raw.problems)
    if problems and params.on_bad_sample == "error":
        raise _problems_error(problems, total, raw.root)
    if not sum(counts.values()):
        raise SegpipeError(f"no usable samples in {raw.root}; check the download stage's output")
    empty = [name for name in SPLITS if not counts[name]]
    if empty and sum(counts.values()) < len(SPLITS):  # no fractions can give each split one of them
        raise SegpipeError(
            f"only {sum(counts.values())} usable samples, and train, val and test each need at least one: add images "
            f"(split(s) {', '.join(empty)} would be empty)"
        )
    if empty:
        raise SegpipeError(
            f"split(s) {', '.join(empty)} would be empty with {sum(counts.values())} usable samples; "
            "add more images or change preprocess.split fractions"
        )
    missing = _missing_classes_error(raw.classes, stats.class_pixels["train"])
    if missing:
        raise missing
    leaks = find_leaks(digests)
    if leaks and params.on_leak == "error":
        shown = shortlist([" = ".join(f"{i} ({s})" for i, s in zip(leak["ids"], leak["splits"])) for leak in leaks], 10, "\n  ")
        raise SegpipeError(f"{len(leaks)} images appear in more than one split (same pixels), so test scores would "
                           f"be inflated:\n  {shown}\nRemove the duplicates, or set preprocess.on_leak: warn to go on")

    mean, std = stats.mean_std()
    labelled = max(1, int(sum(p.sum() for p in stats.class_pixels.values())))
    total_pixels = sum(stats.class_pixels.values())
    summary = {
        "dataset": raw.dataset, "classes": raw.classes, "ignore_index": raw.ignore_index, "resize": resize.as_dict(),
        "mean": mean, "std": std, "counts": counts,
        "class_pixels": {s: dict(zip(raw.classes, stats.class_pixels[s].tolist())) for s in SPLITS},
        "class_frequency": {c: round(int(n) / labelled, 6) for c, n in zip(raw.classes, total_pixels)},
        "train_presence_pixels": dict(zip(raw.classes, stats.presence_pixels.tolist())),
        "rejected": [asdict(p) for p in problems],
        "leaks": leaks,
    }
    write_summary(out_dir, summary)
    return summary
