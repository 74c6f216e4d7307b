"""Colours for classes and masks drawn over images (report figures, `segpipe predict`,
the prediction images of `dvc plots show`)."""

from __future__ import annotations

import numpy as np

from segpipe.data import IGNORE_INDEX


def _voc_palette() -> np.ndarray:
    """(256, 3) uint8: the PASCAL VOC colour map (background black), ignore white."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, r, g, b = label, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[label] = (r, g, b)
    colours[IGNORE_INDEX] = (255, 255, 255)
    return colours


PALETTE = _voc_palette()


def colourise(mask: np.ndarray) -> np.ndarray:
    return PALETTE[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend class colours over an (H, W, 3) uint8 image shown in grey, so that every
    colour in the result comes from a class; background and ignore stay unpainted."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    base = np.repeat(grey[..., None], 3, axis=-1)
    blended = base * (1 - alpha) + colourise(mask).astype(np.float32) * alpha
    keep = ((mask == 0) | (mask == IGNORE_INDEX))[..., None]
    return np.where(keep, base, blended).round().clip(0, 255).astype(np.uint8)


# The grey a legend paints its swatches over: what an unpainted pixel of mid brightness looks like.
LEGEND_GREY = 128


def legend_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: how each class looks in an overlay, over a mid-grey pixel.
    Made by overlay() itself, so a legend shows the colours the overlays really have
    (background unpainted: grey, not the palette's black)."""
    grey = np.full((1, num_classes, 3), LEGEND_GREY, dtype=np.uint8)
    return overlay(grey, np.arange(num_classes, dtype=np.uint8)[None])[0]


def side_by_side(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, min_height: int = 192,
                 gap: int = 4) -> np.ndarray:
    """The image, its true mask and the predicted one as overlays, left to right on white,
    enlarged by a whole factor (nearest neighbour: every pixel stays a class) to at least
    `min_height` pixels, so that small working resolutions stay visible."""
    scale = max(1, -(-min_height // image.shape[0]))
    panels = [image, overlay(image, truth), overlay(image, prediction)]
    panels = [np.repeat(np.repeat(p, scale, axis=0), scale, axis=1) for p in panels]
    height, width = panels[0].shape[:2]
    strip = np.full((height, 3 * width + 2 * gap, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        strip[:, k * (width + gap) : k * (width + gap) + width] = panel
    return strip
