"""From a photo of any size to class scores at its own size.

Every image is brought to the working resolution the model learned from (the
same rule as preprocess), scored there, and the logits are resized back, so the
mask matches the input pixel for pixel. An image that is still much larger than
what the model was trained on at that resolution is scored in overlapping
windows whose logits are blended with a Gaussian weight (as nnU-Net does): a
window's edges, where the network sees zero padding instead of context, count
for almost nothing next to the centre of the window that overlaps them, so no
seams appear where windows meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from segpipe.data.images import read_rgb, resize_rgb
from segpipe.data.normalise import to_float_images
from segpipe.data.processed import DatasetInfo
from segpipe.data.resolution import Resize
from segpipe.device import Runtime
from segpipe.errors import SegpipeError
from segpipe.models.checkpoint import ModelCheckpoint
from segpipe.models.forward import feature_stride, predict_logits

# An image is scored whole unless a side at the working resolution exceeds this
# many window sides: whole images give the model all the context there is.
WINDOWS_ABOVE = 2
# nnU-Net's choice: sigma an eighth of the window, so weight falls to ~3e-4 at its edges.
SIGMA_FRACTION = 1 / 8
# Every pixel keeps some weight, so image corners covered by one window stay defined.
MIN_WEIGHT = 1e-4


@dataclass(frozen=True)
class WindowPlan:
    """How a working-resolution image is scored: whole (size None) or in windows."""

    size: tuple[int, int] | None
    overlap: float = 0.5

    @classmethod
    def parse(cls, text: str, training_shape: tuple[int, int], overlap: float) -> "WindowPlan":
        """`auto` (windows of the training input's shape, for images much larger than it),
        `none` (always whole) or `HxW`."""
        if not 0 <= overlap < 1:
            raise SegpipeError(f"--overlap {overlap}: must be at least 0 and below 1 (0.5: windows overlap by half)")
        if text == "none":
            return cls(None, overlap)
        if text == "auto":
            return cls(tuple(int(s) for s in training_shape), overlap)
        try:
            height, width = (int(part) for part in text.lower().split("x"))
        except ValueError:
            height = width = 0
        if height < 1 or width < 1:
            raise SegpipeError(f"--window {text!r}: give auto, none, or a size HxW at the working resolution (e.g. 256x256)")
        return cls((height, width), overlap)

    def applies_to(self, height: int, width: int) -> bool:
        return self.size is not None and (height > WINDOWS_ABOVE * self.size[0] or width > WINDOWS_ABOVE * self.size[1])


def window_starts(length: int, window: int, overlap: float, stride: int = 1) -> list[int]:
    """Window offsets along one side, the last one flush with the end. The others are
    multiples of the model's stride: a window then pools the same pixels together
    as the whole image does, and away from its edges gives the same logits."""
    if length <= window:
        return [0]
    step = max(stride, round(window * (1 - overlap)) // stride * stride)
    return sorted({*range(0, length - window, step), length - window})


def window_weight(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(height, width) Gaussian centred on the window, 1 at its centre."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n * SIGMA_FRACTION, 1e-6)) ** 2)

    return (axis(height)[:, None] * axis(width)[None, :]).clamp_(min=MIN_WEIGHT)


@torch.inference_mode()
def sliding_logits(model: torch.nn.Module, image: torch.Tensor, window: tuple[int, int], overlap: float,
                   batch_size: int, runtime: Runtime, stride: int = 1) -> tuple[torch.Tensor, int]:
    """(1, 3, H, W) normalised image -> ((1, C, H, W) blended logits, number of windows)."""
    _, _, height, width = image.shape
    # Offsets step by whole strides: a window narrower than the stride would leave the pixels between two of
    # them unscored (NaN logits, a wrong mask). The model pads such a window to its stride anyway (an smp
    # encoder's 32 for training images of 30x30, say), so it takes that many of the image's pixels instead.
    wh, ww = min(max(window[0], stride), height), min(max(window[1], stride), width)
    offsets = [(y, x) for y in window_starts(height, wh, overlap, stride) for x in window_starts(width, ww, overlap, stride)]
    weight = window_weight(wh, ww, image.device)
    total, norm = None, torch.zeros(1, 1, height, width, device=image.device)
    for start in range(0, len(offsets), batch_size):
        chunk = offsets[start : start + batch_size]
        logits = predict_logits(model, torch.cat([image[..., y : y + wh, x : x + ww] for y, x in chunk]), runtime)
        if total is None:
            total = torch.zeros(1, logits.shape[1], height, width, device=image.device)
        for (y, x), window_logits in zip(chunk, logits):
            total[0, :, y : y + wh, x : x + ww] += window_logits * weight
            norm[0, :, y : y + wh, x : x + ww] += weight
    return total / norm, len(offsets)


@dataclass
class Scored:
    """One image's class scores at its original size."""

    logits: torch.Tensor             # (C, H, W) float32, on the device
    working_shape: tuple[int, int]   # where the model saw it
    windows: int                     # 1: scored whole

    def mask(self) -> np.ndarray:
        return self.logits.argmax(dim=0).to(torch.uint8).cpu().numpy()

    def probabilities(self) -> np.ndarray:
        return self.logits.softmax(dim=0).cpu().numpy()


class Predictor:
    """A checkpoint's model with its data contract: uint8 photos in, scores at their size out."""

    def __init__(self, checkpoint: ModelCheckpoint, runtime: Runtime, plan: WindowPlan, batch_size: int = 8,
                 source: Path | str = "the checkpoint"):
        if batch_size < 1:
            raise SegpipeError(f"--batch-size {batch_size}: must be at least 1")
        self.checkpoint, self.runtime, self.plan, self.batch_size = checkpoint, runtime, plan, batch_size
        self.resize = Resize(**checkpoint.data.resize)
        self.model = checkpoint.build_model(runtime.device, source)
        self.stride = feature_stride(self.model)

    def working_shape(self, image: np.ndarray) -> tuple[int, int]:
        return self.resize.shape_for(*image.shape[:2])

    def batch_key(self, image: np.ndarray) -> tuple[int, int] | None:
        """Images with the same key can share one forward pass; None: scored alone, in windows."""
        shape = self.working_shape(image)
        return None if self.plan.applies_to(*shape) else shape

    def _normalised(self, images: list[np.ndarray], shape: tuple[int, int]) -> torch.Tensor:
        return model_input(images, shape, self.checkpoint.data, self.runtime.device)

    @torch.inference_mode()
    def score(self, images: list[np.ndarray]) -> Iterator[Scored]:
        """Scores for images of one batch key (see batch_key), in order."""
        shape = self.working_shape(images[0])
        if self.plan.applies_to(*shape):
            for image in images:
                logits, windows = sliding_logits(self.model, self._normalised([image], shape), self.plan.size,
                                                 self.plan.overlap, self.batch_size, self.runtime, self.stride)
                yield Scored(_to_size(logits, image.shape[:2])[0], shape, windows)
            return
        logits = predict_logits(self.model, self._normalised(images, shape), self.runtime)
        for k, image in enumerate(images):
            yield Scored(_to_size(logits[k : k + 1], image.shape[:2])[0], shape, 1)


def model_input(images: list[np.ndarray], shape: tuple[int, int], data: DatasetInfo, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """(H, W, 3) uint8 photos -> the (N, 3, h, w) normalised batch the model takes at working shape (h, w)."""
    working = np.stack([resize_rgb(image, *shape) for image in images])
    return to_float_images(torch.from_numpy(working).to(device), data.mean, data.std)


def photo_inputs(paths: list[Path], data: DatasetInfo) -> list[np.ndarray]:
    """Each photo as the (1, 3, h, w) normalised batch the model takes at its working resolution."""
    resize = Resize(**data.resize)
    photos = [read_rgb(path) for path in paths]
    return [model_input([photo], resize.shape_for(*photo.shape[:2]), data).numpy() for photo in photos]


def _to_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
