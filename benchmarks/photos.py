"""Synthetic photos for the benchmarks: 480x360 JPEG images with PNG class-index
masks, the sizes and formats of a typical photo dataset, written in the download
stage's layout (a RawDataset with its manifest), so that preprocess and the
conventional per-sample loader read the very same files. No downloads.

Rendering a scene at this size takes ~40 ms, so a small pool of scenes is
rendered once and every file is a different circular shift of one of them:
distinct pixels (preprocess's leak check sees no duplicates), consistent masks,
and ~5 ms per file, mostly JPEG encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.config import PreprocessParams
from segpipe.data.preprocess import preprocess
from segpipe.data.raw import Pair, RawDataset
from segpipe.data.shapes import CLASSES, render_sample

WIDTH, HEIGHT = 480, 360
_SCENES = 16
_JPEG_QUALITY = 90  # what cameras and dataset tools commonly write


def _scenes(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    scenes = []
    for index in range(_SCENES):
        image, mask = render_sample(seed, index, max(WIDTH, HEIGHT), max_objects=4)
        scenes.append((image[:HEIGHT, :WIDTH], mask[:HEIGHT, :WIDTH]))
    return scenes


def write_photos(root: Path, splits: dict[str | None, int], seed: int = 0) -> RawDataset:
    """Write `splits[name]` pairs for each split name (None: let preprocess split
    them by seed) under `root`, with the manifest; returns the dataset."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    scenes = _scenes(seed)
    pairs, index = [], 0
    for split, count in splits.items():
        for _ in range(count):
            image, mask = scenes[index % _SCENES]
            shift = index // _SCENES  # a new (dy, dx) for every pass over the scenes
            offset = ((shift * 17) % HEIGHT, (shift * 29) % WIDTH)
            name = f"{index:06d}"
            Image.fromarray(np.roll(image, offset, axis=(0, 1))).save(root / "images" / f"{name}.jpg",
                                                                      quality=_JPEG_QUALITY)
            Image.fromarray(np.roll(mask, offset, axis=(0, 1))).save(root / "masks" / f"{name}.png")
            pairs.append(Pair(id=name, image=f"images/{name}.jpg", mask=f"masks/{name}.png", split=split))
            index += 1
    raw = RawDataset(root=root, dataset="benchmark_photos", classes=list(CLASSES), pairs=pairs)
    raw.write_manifest()
    return raw


def preprocess_photos(raw: RawDataset, out: Path, side: int, params: PreprocessParams) -> Path:
    """The project's preprocess, storing the photos with their shorter side at `side` pixels."""
    resize = params.resize.model_copy(update={"by": "shorter_side", "to": side})
    preprocess(raw, params.model_copy(update={"resize": resize}), out)
    return out
