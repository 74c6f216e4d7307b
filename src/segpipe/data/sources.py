"""Dataset sources by name: each imports its data into a folder as a RawDataset."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from segpipe.data import shapes
from segpipe.data.folder import import_folder
from segpipe.data.oxford_pet import import_oxford_pet
from segpipe.data.raw import RawDataset
from segpipe.data.voc2012 import import_voc2012
from segpipe.registry import Registry


def _shapes(params, out_dir: Path, cache_dir: Path) -> RawDataset:
    return shapes.generate(params.data.shapes, out_dir)


# name in params.yaml (data.dataset) -> function(params, out_dir, cache_dir) -> RawDataset
SOURCES: Registry[Callable[..., RawDataset]] = Registry("data.dataset", "dataset", {
    "shapes": _shapes,
    "oxford_pet": import_oxford_pet,
    "voc2012": import_voc2012,
    "folder": import_folder,
})


def import_dataset(params, out_dir: Path, cache_dir: Path) -> RawDataset:
    """Import into out_dir; downloaded archives are kept (verified) in cache_dir."""
    dataset = SOURCES[params.data.dataset](params, out_dir, cache_dir)
    dataset.write_manifest()
    return dataset
