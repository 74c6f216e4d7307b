"""The processed-split store: what preprocess writes and train/evaluate read.

    data/processed/summary.json         classes, counts, pixel statistics, rejected files
    data/processed/<split>/images.npy   (N, H, W, 3) uint8
    data/processed/<split>/masks.npy    (N, H, W) uint8, class index or IGNORE_INDEX
    data/processed/<split>/ids.json     the pair id of each row

Arrays stay uint8 and are memory-mapped on load: decoding and resizing happen
once, here, never inside the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe.atomic import read_json, write_json
from segpipe.errors import SegpipeError

SPLITS = ("train", "val", "test")
SUMMARY = "summary.json"


@dataclass(frozen=True)
class ProcessedSplit:
    name: str
    images: np.ndarray
    masks: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, root: Path) -> None:
        folder = root / self.name
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", np.ascontiguousarray(self.images, dtype=np.uint8))
        np.save(folder / "masks.npy", np.ascontiguousarray(self.masks, dtype=np.uint8))
        write_json(folder / "ids.json", self.ids)

    @classmethod
    def load(cls, root: str | Path, name: str) -> "ProcessedSplit":
        folder = Path(root) / name
        if not (folder / "images.npy").exists():
            raise SegpipeError(f"{folder}/images.npy not found; run the preprocess stage first (dvc repro preprocess)")
        return cls(
            name=name,
            images=np.load(folder / "images.npy", mmap_mode="r"),
            masks=np.load(folder / "masks.npy", mmap_mode="r"),
            ids=read_json(folder / "ids.json"),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What every later stage needs to know about the processed data."""

    dataset: str
    classes: list[str]
    ignore_index: int
    size: int
    # Per-channel statistics of the training images, in [0, 1] units.
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def load(cls, root: str | Path) -> "DatasetInfo":
        path = Path(root) / SUMMARY
        if not path.exists():
            raise SegpipeError(f"{path} not found; run the preprocess stage first (dvc repro preprocess)")
        summary = read_json(path)
        return cls(**{k: summary[k] for k in ("dataset", "classes", "ignore_index", "size", "mean", "std")})


def write_summary(root: Path, summary: dict) -> None:
    write_json(root / SUMMARY, summary)
