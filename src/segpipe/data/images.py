"""Reading image and mask files the same way everywhere (sources, preprocess, predict).

Photos come back as (H, W, 3) uint8 whatever their bit depth: a 16-bit photo is
scaled to 8 bits, not clipped to white. Masks come back as the integer array
they hold (1-bit masks as 0/1, 16-bit masks as uint16), never squashed to 8 bits.
A file that cannot be decoded, or that is too large to decode safely, raises
BadImageFile with a message that names it.

Every file is read as viewers show it: an EXIF Orientation tag (phones and cameras store
photos sideways with one; annotation tools draw masks on the photo as shown) is applied,
to photos and to masks alike, wherever a file is read (sources, preprocess, predict).
An animated image (GIF, WebP) gives its first frame, with a warning that says so.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segpipe.errors import SegpipeError, warn

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")

_ORIENTATION = 0x0112  # the EXIF tag
# Orientations 5-8 turn the picture by 90 degrees, so that viewers show it with width and height swapped.
_TURNED = (5, 6, 7, 8)


class BadImageFile(SegpipeError):
    """One file that cannot be used; the message names it and says why."""


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: as stored, 6: turn 90 degrees clockwise to show, ...)."""
    value = image.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


@contextmanager
def open_image(path: str | Path, upright: bool = True) -> Iterator[Image.Image]:
    """The image as viewers show it (its EXIF orientation applied), unless `upright` is False:
    then as stored, its pixels not yet decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Between Pillow's limit and twice it Pillow only warns; such an image is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # exif_transpose decodes the pixels: only for an image that needs turning.
                yield ImageOps.exif_transpose(image) if upright and orientation(image) != 1 else image
    except Image.DecompressionBombError as exc:
        raise BadImageFile(f"{path}: too large to decode safely ({exc}); downscale it or remove it") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise BadImageFile(f"{path}: unreadable ({exc})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as viewers show the image, from the file's header, without decoding the pixels. A PNG's
    EXIF chunk may follow its pixels, and Pillow decodes the whole image to look for it (58 ms for a 2000x1500
    photo, against 0.2 ms for a JPEG's header): a PNG whose header holds none counts as stored. Preprocess,
    which plans from these sizes, finds the rare turned one when it decodes it, and places it again."""
    with open_image(path, upright=False) as image:
        width, height = image.size
        exif_in_header = image.format != "PNG" or "exif" in image.info
        return (height, width) if exif_in_header and orientation(image) in _TURNED else (width, height)


def first_frame_note(path: str | Path, image: Image.Image) -> str | None:
    """What to tell a user whose image is animated: only its first frame is used."""
    frames = getattr(image, "n_frames", 1)
    return f"{path} is animated ({frames} frames): only its first frame is used" if frames > 1 else None


def turned_hint(image_size: tuple[int, int], mask_size: tuple[int, int]) -> str | None:
    """When an image and its mask differ only by a quarter turn ((width, height) each): that is the
    fix, not resizing, which would stretch one onto the other."""
    if image_size != mask_size and image_size == mask_size[::-1]:
        return ("they differ by a quarter turn, not in scale: one of them is stored rotated (an EXIF orientation tag "
                "on one file, or stripped from it, and not on the other); rotate it to match the other as a viewer "
                "shows them (resizing would stretch one onto the other)")
    return None


def to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8. 16-bit and 32-bit greyscale is scaled down by its bit depth."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.int64)
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0 / 257.0
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_photo(path: str | Path) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 as viewers show it, and a note when the file is animated (its first frame is used)."""
    with open_image(path) as image:
        try:
            return to_rgb(image), first_frame_note(path, image)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
            raise BadImageFile(f"{path}: unreadable ({exc})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    image, note = read_photo(path)
    if note:
        warn(note)
    return image


GREY_MODES = ("1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")


def mask_values(image: Image.Image, colour: bool = False) -> np.ndarray:
    """A mask's values: (H, W) integers for single-channel masks, (H, W, 3) for colour.

    1-bit masks are 0/1 (a two-class mask), palette masks their palette indices,
    16-bit masks their 16-bit values."""
    if colour:
        return np.asarray(image.convert("RGB"), dtype=np.int64)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in GREY_MODES:
        return np.asarray(image).astype(np.int64 if image.mode.startswith("I") else np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking, as PIL does)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest neighbour, which keeps every label exact (no blends of classes or of ignore)."""
    if labels.shape[:2] == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST), dtype=labels.dtype)
