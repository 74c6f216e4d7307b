"""`voc2012`: PASCAL VOC 2012 segmentation (21 classes, 255 marks object boundaries
and is ignored). The official train list is divided into train and validation by
seed; the official val list, whose labels are public, serves as the test split."""

from __future__ import annotations

from pathlib import Path

from segpipe.data.download import Archive, extract, fetch
from segpipe.data.raw import Pair, RawDataset

ARCHIVES = [
    Archive("VOCtrainval_11-May-2012.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "md5:6cd6e144f989b92b3379bac3b3de84fd"),
]

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

BASE = "VOCdevkit/VOC2012"
LISTS_AND_MASKS = (f"{BASE}/ImageSets/Segmentation/", f"{BASE}/SegmentationClass/")


def import_voc2012(params, out_dir: Path, cache_dir: Path) -> RawDataset:
    archive = fetch(ARCHIVES[0], cache_dir, params.data.mirror)
    # Only what segmentation needs: the lists and masks first, then just the images
    # they label (a fifth of the archive's JPEGs).
    extract(archive, out_dir, keep=lambda name: name.startswith(LISTS_AND_MASKS))
    lists = out_dir / BASE / "ImageSets" / "Segmentation"
    splits = {split: (lists / name).read_text().split() for split, name in (("trainval", "train.txt"), ("test", "val.txt"))}
    wanted = {f"{BASE}/JPEGImages/{image_id}.jpg" for ids in splits.values() for image_id in ids}
    extract(archive, out_dir, keep=lambda name: name in wanted)
    # The masks are palette PNGs whose indices are the class numbers: used as they are.
    pairs = [
        Pair(id=image_id, image=f"{BASE}/JPEGImages/{image_id}.jpg", mask=f"{BASE}/SegmentationClass/{image_id}.png", split=split)
        for split, ids in splits.items() for image_id in ids
    ]
    return RawDataset(root=out_dir, dataset="voc2012", classes=list(CLASSES), pairs=pairs)
