"""Dataset sources by name: each turns its params into a RawDataset under a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from segpipe.data import shapes
from segpipe.data.raw import RawDataset


def _shapes(params, out_dir: Path) -> RawDataset:
    return shapes.generate(params.data.shapes, out_dir)


# name in params.yaml (data.dataset) -> function(params, out_dir) -> RawDataset
SOURCES: dict[str, Callable[..., RawDataset]] = {
    "shapes": _shapes,
}


def import_dataset(params, out_dir: Path) -> RawDataset:
    dataset = SOURCES[params.data.dataset](params, out_dir)
    dataset.write_manifest()
    return dataset
