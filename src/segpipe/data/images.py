"""Reading image and mask files the same way everywhere (sources, preprocess, predict).

Photos come back as (H, W, 3) uint8 whatever their bit depth: a 16-bit photo is
scaled to 8 bits, not clipped to white. Masks come back as the integer array
they hold (1-bit masks as 0/1, 16-bit masks as uint16), never squashed to 8 bits.
A file that cannot be decoded, or that is too large to decode safely, raises
BadImageFile with a message that names it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.errors import SegpipeError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class BadImageFile(SegpipeError):
    """One file that cannot be used; the message names it and says why."""


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Between Pillow's limit and twice it Pillow only warns; such an image is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except Image.DecompressionBombError as exc:
        raise BadImageFile(f"{path}: too large to decode safely ({exc}); downscale it or remove it") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise BadImageFile(f"{path}: unreadable ({exc})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with open_image(path) as image:
        return image.size


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


def read_rgb(path: str | Path) -> np.ndarray:
    with open_image(path) as image:
        try:
            return to_rgb(image)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
            raise BadImageFile(f"{path}: unreadable ({exc})") from None


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
