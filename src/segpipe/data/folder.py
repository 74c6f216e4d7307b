"""`folder`: the user's own images and masks, matched by file stem.

Masks may hold class indices directly, one grey value or RGB colour per class
(`values`), or be lossy greyscale (JPEG) masks split by a `threshold`. Images
and masks of different sizes are an error unless `resize` says which one to
resize: nothing is resized silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.data import IGNORE_INDEX
from segpipe.data.raw import Pair, RawDataset
from segpipe.errors import SegpipeError, shortlist

EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_SHOWN = 10


def _by_stem(folder: Path, key: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise SegpipeError(f"data.folder.{key}: {folder} is not a folder; set it to the folder of your {key}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in EXTENSIONS:
            if path.stem in files:
                raise SegpipeError(f"{files[path.stem]} and {path} share the stem {path.stem!r}; keep one of them")
            files[path.stem] = path
    if not files:
        raise SegpipeError(f"data.folder.{key}: no {', '.join(sorted(EXTENSIONS))} files in {folder}")
    return files


def mask_to_labels(mask: Image.Image, spec, path: Path) -> np.ndarray:
    """Decode one mask into class indices (IGNORE_INDEX for ignored pixels)."""
    if spec.threshold is not None:
        grey = np.asarray(mask.convert("L"))
        labels = (grey >= spec.threshold).astype(np.uint8)
        if spec.ignore_value is not None:
            labels[grey == spec.ignore_value] = IGNORE_INDEX
        return labels
    if spec.values is None:
        if mask.mode not in ("L", "P", "1", "I;16", "I"):
            raise SegpipeError(f"{path} is a {mask.mode} colour mask; list each class's colour in data.folder.values")
        labels = np.asarray(mask if mask.mode == "P" else mask.convert("L")).astype(np.uint8)
        if spec.ignore_value is not None:
            labels = np.where(labels == spec.ignore_value, IGNORE_INDEX, labels).astype(np.uint8)
        return labels
    colour = isinstance(spec.values[0], list)
    pixels = np.asarray(mask.convert("RGB") if colour else mask.convert("L")).astype(np.int32)
    if not colour:
        pixels = pixels[..., None]
    labels = np.full(pixels.shape[:2], 254, dtype=np.uint8)  # 254: "no class matched" until proven otherwise
    for index, value in enumerate(spec.values):
        labels[(pixels == np.atleast_1d(value)).all(axis=-1)] = index
    if spec.ignore_value is not None:
        labels[(pixels == np.atleast_1d(spec.ignore_value)).all(axis=-1)] = IGNORE_INDEX
    unmatched = labels == 254
    if unmatched.any():
        found = np.unique(pixels[unmatched].reshape(-1, pixels.shape[-1]), axis=0)[:5].tolist()
        raise SegpipeError(
            f"{path}: mask values {found} match no class in data.folder.values; add them, set data.folder.ignore_value, "
            "or use data.folder.threshold for lossy (JPEG) greyscale masks"
        )
    return labels


def _split_lists(spec, root: Path) -> dict[str, str]:
    if spec.splits is None:
        return {}
    split_of = {}
    for split, list_file in spec.splits.items():
        path = root / list_file
        if not path.exists():
            raise SegpipeError(f"data.folder.splits.{split}: {path} not found")
        for stem in path.read_text().split():
            split_of[Path(stem).stem] = split
    return split_of


def import_folder(params, out_dir: Path, cache_dir: Path, project_root: Path = Path(".")) -> RawDataset:
    spec = params.data.folder
    images = _by_stem(project_root / spec.images, "images")
    masks = _by_stem(project_root / spec.masks, "masks")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise SegpipeError(f"no mask in {spec.masks} for images {shortlist(missing, _SHOWN)}; add the masks or move those images out")
    split_of = _split_lists(spec, project_root)

    (out_dir / "images").mkdir(parents=True)
    (out_dir / "masks").mkdir()
    pairs, mismatched = [], []
    for stem, image_path in images.items():
        resized = None
        try:
            with Image.open(image_path) as image, Image.open(masks[stem]) as mask:
                labels = mask_to_labels(mask, spec, masks[stem])
                if image.size != mask.size:
                    if spec.resize is None:
                        mismatched.append(f"{image_path.name} {image.size[0]}x{image.size[1]} vs "
                                          f"{masks[stem].name} {mask.size[0]}x{mask.size[1]}")
                        continue
                    if spec.resize == "image_to_mask":
                        resized = image.convert("RGB").resize(mask.size, Image.BILINEAR)
                    else:  # mask_to_image: nearest keeps labels exact
                        labels = np.asarray(Image.fromarray(labels).resize(image.size, Image.NEAREST))
        except (OSError, UnidentifiedImageError) as exc:
            raise SegpipeError(f"cannot read {image_path} or {masks[stem]}: {exc}") from None
        if resized is not None:
            image_name = f"images/{stem}.png"
            resized.save(out_dir / image_name)
        else:
            image_name = f"images/{stem}{image_path.suffix.lower()}"
            shutil.copyfile(image_path, out_dir / image_name)
        Image.fromarray(labels).save(out_dir / "masks" / f"{stem}.png")
        pairs.append(Pair(id=stem, image=image_name, mask=f"masks/{stem}.png", split=split_of.get(stem)))
    if mismatched:
        raise SegpipeError(
            f"{len(mismatched)} images differ in size from their masks: {shortlist(mismatched, _SHOWN)}; "
            "set data.folder.resize to image_to_mask (resize each image to its mask) or mask_to_image "
            "(resize each mask to its image, nearest neighbour)"
        )
    return RawDataset(root=out_dir, dataset="folder", classes=list(spec.classes), pairs=pairs)
