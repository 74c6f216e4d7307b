"""`folder`: the user's own images and masks, matched by file stem.

Layouts: one folder of images and one of masks (`images`, `masks`); the same with
train/ val/ test/ subfolders in each (split by folder); or one folder pair per
split (`split_folders`, e.g. CamVid's train/ trainannot/ val/ valannot/ ...).

Masks may hold class indices directly, one grey value (8 or 16 bit) or RGB colour
per class (`values`), or be lossy greyscale (JPEG) masks split by a `threshold`.
A mask value that is no class is never passed on as "ignore": only
`ignore_value` marks pixels to ignore. Images and masks of different sizes are an
error unless `resize` says which one to resize. A file that cannot be used is
listed in the manifest's problems, for preprocess to report.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.data import IGNORE_INDEX
from segpipe.data.images import (
    EXTENSIONS,
    GREY_MODES,
    BadImageFile,
    mask_values,
    open_image,
    resize_labels,
    resize_rgb,
    to_rgb,
    turned_hint,
)
from segpipe.data.raw import Pair, Problem, RawDataset
from segpipe.errors import SegpipeError, shortlist

_SHOWN = 10
SPLITS = ("train", "val", "test")


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
        raise SegpipeError(f"data.folder.{key}: no {', '.join(EXTENSIONS)} files in {folder}")
    return files


def _has_split_subfolders(folder: Path) -> bool:
    """images/{train,val,test}/...: split folders and no images of its own."""
    return (folder.is_dir() and any((folder / s).is_dir() for s in SPLITS)
            and not any(p.suffix.lower() in EXTENSIONS for p in folder.iterdir()))


def source_folders(spec, root: Path) -> list[tuple[str | None, Path, Path]]:
    """(split or None, images folder, masks folder) for each folder pair to import."""
    if spec.split_folders is not None:
        return [(split, root / pair.images, root / pair.masks) for split, pair in spec.split_folders.items()]
    images, masks = root / spec.images, root / spec.masks
    if _has_split_subfolders(images):
        splits = [s for s in SPLITS if (images / s).is_dir()]
        absent = [s for s in splits if not (masks / s).is_dir()]
        if absent:
            raise SegpipeError(f"data.folder.images has {', '.join(f'{s}/' for s in splits)} folders but data.folder.masks "
                               f"({masks}) lacks {', '.join(f'{s}/' for s in absent)}; give masks the same split folders")
        if spec.splits:
            raise SegpipeError("data.folder.images is split into folders already: leave data.folder.splits null")
        return [(s, images / s, masks / s) for s in splits]
    return [(None, images, masks)]


def mask_to_labels(mask: Image.Image, spec, num_classes: int, path: Path) -> tuple[np.ndarray, list]:
    """Class indices (uint8, IGNORE_INDEX for ignored pixels) and the values that
    matched no class (empty when the mask is good)."""
    if spec.threshold is not None:
        grey = mask_values(mask)
        labels = (grey >= spec.threshold).astype(np.uint8)
        if spec.ignore_value is not None:
            labels[grey == spec.ignore_value] = IGNORE_INDEX
        return labels, []
    colour = spec.values is not None and isinstance(spec.values[0], list)
    if spec.values is None and mask.mode in ("LA", "La", "PA"):  # grey (or palette) + alpha: the grey is read
        raise BadImageFile(f"{path} is a grey+alpha ({mask.mode}) mask: its grey values are read, the alpha is not; "
                           "list each class's grey value in data.folder.values (e.g. [0, 255])")
    if spec.values is None and mask.mode not in GREY_MODES:
        raise BadImageFile(f"{path} is a {mask.mode} colour mask; list each class's colour in data.folder.values")
    pixels = mask_values(mask, colour)
    pixels = pixels if colour else pixels[..., None]
    values = spec.values if spec.values is not None else list(range(num_classes))
    # Which pixels matched is kept apart from the labels: every uint8 value but IGNORE_INDEX is a class
    # (255 classes are 0..254), so no label value can stand for "no class matched".
    labels = np.zeros(pixels.shape[:2], dtype=np.uint8)
    unmatched = np.ones(pixels.shape[:2], dtype=bool)
    for index, value in enumerate(values):
        hit = (pixels == np.atleast_1d(value)).all(axis=-1)
        labels[hit], unmatched[hit] = index, False
    if spec.ignore_value is not None:
        hit = (pixels == np.atleast_1d(spec.ignore_value)).all(axis=-1)
        labels[hit], unmatched[hit] = IGNORE_INDEX, False
    unknown = np.unique(pixels[unmatched].reshape(-1, pixels.shape[-1]), axis=0).tolist() if unmatched.any() else []
    return labels, [v if colour else v[0] for v in unknown]


def unknown_values_hint(values: list, spec_has_values: bool, num_classes: int) -> str:
    """What to set when masks hold values that are no class."""
    shown = values[:5]
    if spec_has_values:
        return (f"mask values {shown} match no class in data.folder.values: add them, set data.folder.ignore_value "
                "for a void label, or use data.folder.threshold for lossy (JPEG) greyscale masks")
    return (f"mask values {shown} are not class indices 0..{num_classes - 1}: if one marks pixels to ignore (a void "
            f"label), set data.folder.ignore_value: {shown[0]}; if the masks code classes by other values (0 and 255, "
            "say), list one per class in data.folder.values; for lossy (JPEG) masks use data.folder.threshold")


def _split_lists(spec, root: Path) -> dict[str, str]:
    """Stem -> split from the split list files (one stem per line, resolved against the project root)."""
    if spec.splits is None:
        return {}
    split_of = {}
    for split, list_file in spec.splits.items():
        path = root / list_file
        if not path.exists():
            raise SegpipeError(f"data.folder.splits.{split}: {path} not found (paths are relative to the project root)")
        for stem in path.read_text().split():
            split_of[Path(stem).stem] = split
    return split_of


class _Importer:
    def __init__(self, spec, out_dir: Path):
        self.spec, self.out_dir = spec, out_dir
        self.num_classes = len(spec.classes)

    def __call__(self, item: tuple[str, Path, Path, str | None]) -> Pair | Problem | str:
        """A pair, a problem, or (a size mismatch, when no resize is set) its description."""
        stem, image_path, mask_path, split = item
        spec = self.spec
        try:
            with open_image(mask_path) as mask:
                labels, unknown = mask_to_labels(mask, spec, self.num_classes, mask_path)
            if unknown:
                return Problem(stem, str(image_path), str(mask_path),
                               f"{mask_path}: {unknown_values_hint(unknown, spec.values is not None, self.num_classes)}",
                               unknown_values=unknown)
            with open_image(image_path) as image:
                width, height = image.size
                resized = None
                if (width, height) != labels.shape[::-1]:
                    turned = turned_hint((width, height), labels.shape[::-1])
                    if turned:  # no resize can fix this
                        return Problem(stem, str(image_path), str(mask_path),
                                       f"{image_path} is {width}x{height} but {mask_path} is "
                                       f"{labels.shape[1]}x{labels.shape[0]}: {turned}")
                    if spec.resize is None:
                        return (f"{image_path.name} {width}x{height} vs {mask_path.name} "
                                f"{labels.shape[1]}x{labels.shape[0]}")
                    if spec.resize == "image_to_mask":
                        resized = resize_rgb(to_rgb(image), *labels.shape)
                    else:
                        labels = resize_labels(labels, height, width)
        except BadImageFile as exc:
            return Problem(stem, str(image_path), str(mask_path), str(exc))
        except (OSError, ValueError, SyntaxError) as exc:  # truncated pixel data, found while decoding
            return Problem(stem, str(image_path), str(mask_path), f"{image_path} or {mask_path}: unreadable ({exc})")
        if resized is not None:
            image_name = f"images/{stem}.png"
            Image.fromarray(resized).save(self.out_dir / image_name)
        else:
            image_name = f"images/{stem}{image_path.suffix.lower()}"
            shutil.copyfile(image_path, self.out_dir / image_name)
        Image.fromarray(labels).save(self.out_dir / "masks" / f"{stem}.png")
        return Pair(id=stem, image=image_name, mask=f"masks/{stem}.png", split=split)


def _hint_suffixed_names(problems: list[Problem]) -> list[Problem]:
    """Images without masks and masks without images whose stems differ by a suffix (horse001.jpg and
    horse001_mask.png): say so, and what to rename, in both reasons."""
    lonely_images = {p.id: i for i, p in enumerate(problems) if p.mask is None}
    hints: dict[int, str] = {}
    for j, mask_problem in enumerate(problems):
        if mask_problem.image is not None:
            continue
        # The longest image stem the mask's stem starts with: horse10_mask is horse10's, not horse1's.
        stem = next((mask_problem.id[:n] for n in range(len(mask_problem.id) - 1, 0, -1)
                     if mask_problem.id[:n] in lonely_images), None)
        if stem is not None:
            i = lonely_images[stem]
            hints[i] = hints[j] = (
                f"; {Path(mask_problem.mask).name} beside {Path(problems[i].image).name}: the names differ by "
                f"{mask_problem.id[len(stem):]!r}, and images and masks are matched by the whole stem: rename the "
                f"masks to the images' stems ({stem}{Path(mask_problem.mask).suffix})")
    return [dataclasses.replace(p, reason=p.reason + hints[i]) if i in hints else p for i, p in enumerate(problems)]


def import_folder(params, out_dir: Path, cache_dir: Path, project_root: Path = Path(".")) -> RawDataset:
    spec = params.data.folder
    split_of = _split_lists(spec, project_root)
    work, problems, seen = [], [], {}
    for split, images_dir, masks_dir in source_folders(spec, project_root):
        images, masks = _by_stem(images_dir, "images"), _by_stem(masks_dir, "masks")
        for stem in sorted(set(images) | set(masks)):
            if stem in seen:
                raise SegpipeError(f"{images.get(stem) or masks[stem]} and {seen[stem]} share the stem {stem!r} across "
                                   "split folders; rename one of them")
            seen[stem] = images.get(stem) or masks[stem]
            if stem not in masks:
                problems.append(Problem(stem, str(images[stem]), None, f"{images[stem]}: no mask with this stem in {masks_dir}"))
            elif stem not in images:
                problems.append(Problem(stem, None, str(masks[stem]), f"{masks[stem]}: no image with this stem in {images_dir}"))
            else:
                work.append((stem, images[stem], masks[stem], split or split_of.get(stem)))

    problems = _hint_suffixed_names(problems)
    (out_dir / "images").mkdir(parents=True)
    (out_dir / "masks").mkdir()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_Importer(spec, out_dir), work))
    pairs = [r for r in results if isinstance(r, Pair)]
    problems += [r for r in results if isinstance(r, Problem)]
    mismatched = [r for r in results if isinstance(r, str)]
    if mismatched:
        raise SegpipeError(
            f"{len(mismatched)} images differ in size from their masks: {shortlist(mismatched, _SHOWN)}; "
            "set data.folder.resize to image_to_mask (resize each image to its mask) or mask_to_image "
            "(resize each mask to its image, nearest neighbour)"
        )
    return RawDataset(root=out_dir, dataset="folder", classes=list(spec.classes), pairs=pairs,
                      problems=sorted(problems, key=lambda p: p.id))
