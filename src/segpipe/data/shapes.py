"""`shapes`: a synthetic dataset generated offline and deterministically from a seed.

Three object classes told apart by shape alone: colour is drawn at random for
every object, backgrounds are noisy colour gradients, and objects of different
sizes overlap (the later one occludes the earlier), so a model must learn shape.
Image i depends only on (seed, i): growing num_images keeps earlier images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.config import ShapesParams
from segpipe.data.raw import Pair, RawDataset

CLASSES = ["background", "circle", "square", "triangle"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    corners = rng.uniform(0, 255, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    gradient = (1 - t) * ((1 - s) * corners[0, 0] + s * corners[0, 1]) + t * ((1 - s) * corners[1, 0] + s * corners[1, 1])
    # Coarse blobs plus pixel noise: texture that no single threshold separates.
    coarse = rng.normal(0, 25, size=(size // 8 + 1, size // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:size, :size]
    return gradient + coarse + rng.normal(0, 12, size=(size, size, 3))


def _shape_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    radius = rng.uniform(0.09, 0.24) * size
    cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = x - cx, y - cy
    # Rotate the frame so squares and triangles appear at any orientation.
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "circle":
        return u * u + v * v <= radius * radius
    if kind == "square":
        half = radius * 0.85
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Equilateral triangle with circumradius `radius * 1.2`: inside all three edges.
    inside = np.ones_like(u, dtype=bool)
    r_in = radius * 0.6
    for k in range(3):
        theta = 2 * np.pi * k / 3
        inside &= u * np.cos(theta) + v * np.sin(theta) <= r_in
    return inside


def _distinct_colour(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - against).sum() > 120:
            return colour
    return 255.0 - against


def render_sample(seed: int, index: int, size: int, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8, mask HxW uint8) pair."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        label = int(rng.integers(1, len(CLASSES)))
        region = _shape_mask(CLASSES[label], rng, size)
        colour = _distinct_colour(rng, image[region].mean(axis=0) if region.any() else image.mean(axis=(0, 1)))
        image[region] = colour + rng.normal(0, 10, size=(int(region.sum()), 3))
        mask[region] = label
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate(params: ShapesParams, out_dir: Path) -> RawDataset:
    (out_dir / "images").mkdir(parents=True)
    (out_dir / "masks").mkdir()
    pairs = []
    width = max(4, len(str(params.num_images - 1)))
    for index in range(params.num_images):
        image, mask = render_sample(params.seed, index, params.image_size, params.max_objects)
        name = f"{index:0{width}d}"
        Image.fromarray(image).save(out_dir / "images" / f"{name}.png")
        Image.fromarray(mask).save(out_dir / "masks" / f"{name}.png")
        pairs.append(Pair(id=name, image=f"images/{name}.png", mask=f"masks/{name}.png"))
    return RawDataset(root=out_dir, dataset="shapes", classes=list(CLASSES), pairs=pairs)
