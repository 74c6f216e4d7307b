"""`oxford_pet`: the Oxford-IIIT Pet dataset (Parkhi et al., 2012) as pet/background
segmentation from its trimaps, with the official trainval/test lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.data import IGNORE_INDEX
from segpipe.data.download import Archive, extract, fetch
from segpipe.data.raw import Pair, RawDataset

ARCHIVES = [
    Archive("images.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
            "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    Archive("annotations.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
            "md5:95a8c909bbe2e81eed6a22bccdf3f68f"),
]

# Trimap values in the official PNGs.
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3


def classes_for(border: str) -> list[str]:
    return ["background", "pet", "border"] if border == "class" else ["background", "pet"]


def trimap_to_labels(trimap: np.ndarray, border: str) -> np.ndarray:
    """Trimap (1 pet, 2 background, 3 border) -> class indices; the border goes
    to ignore, to pet, to background, or stays a class of its own."""
    border_label = {"ignore": IGNORE_INDEX, "pet": 1, "background": 0, "class": 2}[border]
    labels = np.full(trimap.shape, IGNORE_INDEX, dtype=np.uint8)
    labels[trimap == TRIMAP_BACKGROUND] = 0
    labels[trimap == TRIMAP_PET] = 1
    labels[trimap == TRIMAP_BORDER] = border_label
    return labels


def read_list(path: Path) -> list[str]:
    """Image ids from an official list file ("Abyssinian_100 1 1 1" per line)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def import_oxford_pet(params, out_dir: Path, cache_dir: Path) -> RawDataset:
    border = params.data.oxford_pet.border
    for archive in ARCHIVES:
        extract(fetch(archive, cache_dir, params.data.mirror), out_dir,
                keep=lambda name: not name.startswith("annotations/xmls"))
    (out_dir / "masks").mkdir()
    pairs = []
    for split, list_file in (("trainval", "trainval.txt"), ("test", "test.txt")):
        for image_id in read_list(out_dir / "annotations" / list_file):
            with Image.open(out_dir / "annotations" / "trimaps" / f"{image_id}.png") as trimap:
                labels = trimap_to_labels(np.asarray(trimap), border)
            Image.fromarray(labels).save(out_dir / "masks" / f"{image_id}.png")
            pairs.append(Pair(id=image_id, image=f"images/{image_id}.jpg", mask=f"masks/{image_id}.png", split=split))
    return RawDataset(root=out_dir, dataset="oxford_pet", classes=classes_for(border), pairs=pairs)
