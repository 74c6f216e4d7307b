"""Colours for classes and masks drawn over images (report figures, `segpipe predict`)."""

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
