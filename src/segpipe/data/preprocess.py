"""Validate every raw pair, bring it to the working resolution once, split
deterministically, and write uint8 arrays to disk.

The stage's process plans where every pair goes from the images' headers and
creates the files at their final size; a pool of processes, one per core
(preprocess.workers), decodes, resizes and writes each pair straight into its
place, and sends back only small figures (its statistics, its content hash).
Memory stays flat whatever the dataset's size, on every core, and the output is
the same bytes whatever the count. The summary records what a person needs
before trusting a number: counts, per-class pixels, rejected files and images
that appear in more than one split.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import shutil
import sys
import types
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import numpy as np

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
from segpipe.data.processed import SPLITS, Slot, SplitFiles, write_summary
from segpipe.data.raw import Pair, Problem, RawDataset
from segpipe.data.resolution import Resize
from segpipe.errors import SegpipeError, shortlist

if TYPE_CHECKING:  # not at run time: the pool's processes import this module, and pydantic would double their start-up
    from segpipe.config import PreprocessParams, SplitParams

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
    digest = hashlib.sha1(np.ascontiguousarray(image))  # the pixels, then the shape, with no copy of the pixels
    digest.update(repr(image.shape).encode())
    return Sample(pair, resize_rgb(image, work_h, work_w), resize_labels(labels, work_h, work_w),
                  labels if keep_native else None, digest.hexdigest())


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, pool: Executor) -> Iterator[R]:
    """Like pool.map, in order, but with only a few results in flight, so memory
    stays flat however many items there are (Executor.map submits them all)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 4 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class Task:
    pair: Pair
    split: str
    slot: Slot | None  # where its arrays go (None: its header was unreadable, so none was planned)


@dataclass(frozen=True)
class Outcome:
    """What becomes of one pair: no pixels, only what the index and the statistics need."""

    problem: Problem | None = None
    placed: bool = False                    # written into its slot (not when its decoded size differs from the plan)
    digest: str | None = None               # of the decoded original image, for leak detection
    class_pixels: np.ndarray | None = None  # at the working resolution
    moments: tuple | None = None            # train: channel sums and sums of squares in [0, 1] units, pixel count


def sample_statistics(sample: Sample, num_classes: int, train: bool) -> tuple[np.ndarray, tuple | None]:
    counts = np.bincount(sample.mask.reshape(-1), minlength=256)[:num_classes]
    if not train:
        return counts, None
    pixels = sample.image.reshape(-1, 3).astype(np.float64) / 255.0
    return counts, (pixels.sum(axis=0), np.square(pixels).sum(axis=0), len(pixels))


class PairWriter:
    """Decodes, validates and resizes one pair and writes its arrays into their slot: what every process of
    the pool does, and the stage's own process when it works alone (preprocess.workers: 1)."""

    def __init__(self, raw: RawDataset, resize: Resize, min_side: int):
        # Without the list of pairs, which each task brings: a worker's memory does not grow with the dataset.
        self.raw, self.resize, self.min_side = replace(raw, pairs=[], problems=[]), resize, min_side

    def __call__(self, task: Task) -> Outcome:
        sample = self.decode(task)
        if sample.problem:
            return Outcome(sample.problem)
        placed = task.slot is not None and task.slot.fits(sample.mask, sample.native_mask)
        if placed:
            task.slot.write(sample.image, sample.mask, sample.native_mask)
        return Outcome(None, placed, sample.digest, *sample_statistics(sample, len(self.raw.classes), task.split == "train"))

    def decode(self, task: Task) -> Sample:
        return load_sample(self.raw, task.pair, self.resize, self.min_side, keep_native=task.split == "test")


# In each process of the pool: its PairWriter, set once when it starts (not sent with every pair).
_PAIR_WRITER: list[PairWriter] = []


def _start_worker(writer: PairWriter) -> None:
    _PAIR_WRITER.append(writer)


def _write_in_worker(tasks: list[Task]) -> list[Outcome]:
    return [_PAIR_WRITER[0](task) for task in tasks]


def _started() -> None:
    """A task that does nothing: the pool starts a process for it."""


def worker_count(setting: int) -> int:
    """preprocess.workers: 0 means one per core this process may use."""
    if setting:
        return setting
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _main_left_out() -> Iterator[None]:
    """__main__ a bare module while the pool's processes are spawned. A spawned process first runs the parent's
    main script or module again, so that what is defined there can be unpickled; the pool sends nothing from
    there, and a main that imports torch (the benchmark harness's does, a user's script may) made each process
    start in 3.5 s instead of 0.3 s. Given a bare __main__, they skip it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class PairWriters:
    """Runs a PairWriter over tasks, in order: in `workers` processes, or in this one alone when `workers` is 1
    (one core, one pair after another). Processes, because decoding and resizing hold the GIL for much of
    their time: threads kept one core busy. Spawned, not forked: the parent may hold torch's threads,
    which a fork copies in whatever state they were."""

    def __init__(self, writer: PairWriter, workers: int):
        self.writer, self.workers, self.pool = writer, workers, None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(writer,))
            # The pool starts a process for each task submitted while none is idle, up to `workers`: this starts
            # them all now, so that their start-up (a fresh interpreter importing numpy and PIL, about 0.15 s)
            # overlaps the planning that follows in this process.
            try:
                with _main_left_out():
                    for _ in range(workers):
                        self.pool.submit(_started)
            except BaseException:  # a process that could not start (no memory, a process limit): stop those that did
                self.pool.shutdown(cancel_futures=True)
                raise

    def map(self, tasks: list[Task]) -> Iterator[Outcome]:
        if self.pool is None:
            return map(self.writer, tasks)
        return itertools.chain.from_iterable(bounded_map(_write_in_worker, self._chunks(tasks), self.workers, self.pool))

    def _chunks(self, tasks: list[Task]) -> Iterator[list[Task]]:
        """A few pairs to a message (up to 8, about 30 ms of work at 480x360), which costs this process less than
        one each; fewer as the end nears, so that the processes finish together."""
        start = 0
        while start < len(tasks):
            size = max(1, min(8, (len(tasks) - start) // (8 * self.workers)))
            yield tasks[start : start + size]
            start += size

    def __enter__(self) -> "PairWriters":
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

    def add(self, split: str, outcome: Outcome) -> None:
        """One sample's figures (sample_statistics), added in the samples' order: the same sums whatever the
        number of processes."""
        self.class_pixels[split] += outcome.class_pixels
        if split == "train":
            self.presence_pixels[outcome.class_pixels > 0] += outcome.class_pixels.sum()
            channel_sum, channel_squares, pixel_count = outcome.moments
            self.channel_sum += channel_sum
            self.channel_squares += channel_squares
            self.pixel_count += pixel_count

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


def header_shapes(raw: RawDataset, pairs: list[Pair]) -> list[tuple[int, int] | None]:
    """Each pair's (height, width) as viewers show it, from its image's header, without decoding the pixels: None
    for a header that cannot be read (the pair is reported when it is decoded)."""
    shapes = []
    for pair in pairs:
        try:
            width, height = image_size(raw.root / pair.image)
            shapes.append((height, width))
        except BadImageFile:
            shapes.append(None)
    return shapes


def bytes_to_write(work_shapes: list[tuple[int, int] | None], native_shapes: list[tuple[int, int] | None]) -> int:
    """Each image (3 bytes a pixel) and mask (1) at the working resolution, and the test masks at their own."""
    return sum(4 * h * w for h, w in filter(None, work_shapes)) + sum(h * w for h, w in filter(None, native_shapes))


def _decode_again(writer: PairWriter, task: Task) -> tuple:
    """The arrays of a pair that was not written into its slot (its decoded size differs from its header's)."""
    sample = writer.decode(task)
    if sample.problem:  # it decoded a moment ago: the file changed since
        raise SegpipeError(f"{task.pair.image} changed while preprocess read it ({sample.problem.reason}); run it again")
    return sample.image, sample.mask, sample.native_mask


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
    writer = PairWriter(raw, resize, params.min_side)
    stats = _Statistics(len(raw.classes))
    problems: list[Problem] = list(raw.problems)
    digests: dict[str, list[tuple[str, str]]] = {}
    kept: dict[str, list[tuple[int, str, bool]]] = {name: [] for name in SPLITS}  # (index in the split, id, placed)
    # The processes start first, so that their start-up overlaps the reading of the headers; never more than pairs.
    with PairWriters(writer, min(worker_count(params.workers), max(1, len(raw.pairs)))) as writers:
        # Every pair's place in its split's files, planned from the headers: the space check adds it up, and the
        # processes write each pair straight into its place, so that no pixels pass through this process.
        sizes = {name: header_shapes(raw, splits[name]) for name in SPLITS}
        shapes = {name: [resize.shape_for(*size) if size else None for size in sizes[name]] for name in SPLITS}
        natives = {name: sizes[name] if name == "test" else None for name in SPLITS}  # test masks at their own size
        check_space(out_dir, sum(bytes_to_write(shapes[name], natives[name] or []) for name in SPLITS))
        files = {name: SplitFiles(out_dir, name, shapes[name], natives[name]) for name in SPLITS}
        places = [(name, index) for name in SPLITS for index in range(len(splits[name]))]
        tasks = [Task(splits[name][index], name, files[name].slots[index]) for name, index in places]
        # Outcomes come in the pairs' order, so the statistics add up the same whatever the number of processes.
        for (name, index), outcome in zip(places, writers.map(tasks)):
            pair = splits[name][index]
            if outcome.problem:
                problems.append(outcome.problem)
                continue
            stats.add(name, outcome)
            digests.setdefault(outcome.digest, []).append((pair.id, name))
            kept[name].append((index, pair.id, outcome.placed))
    counts = {name: len(kept[name]) for name in SPLITS}

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

    for name in SPLITS:  # after the checks: a stage that stops compacts nothing
        files[name].close(kept[name], lambda index, name=name: _decode_again(writer, Task(splits[name][index], name, None)))
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
