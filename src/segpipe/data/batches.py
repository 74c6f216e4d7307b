"""Batches of a processed split on the device: shuffled and cropped for training,
whole and grouped by shape for evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
import torch

from segpipe.data.normalise import to_float_images
from segpipe.data.processed import ProcessedSplit
from segpipe.device import Runtime
from segpipe.errors import SegpipeError


class Batch(NamedTuple):
    images: torch.Tensor  # (N, 3, H, W) float, normalised
    masks: torch.Tensor   # (N, H, W) int64
    index: np.ndarray     # the split's rows


@dataclass
class Batches:
    """Batches of a memory-mapped split, moved to the device and normalised there.

    Training (a generator given) shuffles, and takes a random `crop` of every
    image when set, padding images smaller than the crop with ignored pixels.
    Evaluation keeps whole images and batches only images of one shape.

    Under DDP each process takes its `shard` (rank, processes) of every batch;
    `batch_size` is the global batch. Every process draws the random numbers of the
    whole batch and keeps its share, so the data a process sees, crops and all, is
    exactly its part of what one process would see.

    A split that fits in a quarter of the GPU's free memory is copied there once
    (`resident`), and batches never touch the host again."""

    split: ProcessedSplit
    batch_size: int
    runtime: Runtime
    mean: torch.Tensor
    std: torch.Tensor
    crop: tuple[int, int] | None = None
    ignore_index: int = 255
    shard: tuple[int, int] = (0, 1)
    resident: bool | None = None  # None: on the GPU when it fits
    _device_layout: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32, device=self.runtime.device)
        self.std = torch.as_tensor(self.std, dtype=torch.float32, device=self.runtime.device)
        if self.resident is None:
            self.resident = _fits_on_gpu(self.split, self.runtime.device)
        if self.resident:
            self.split = self.split.on_device(self.runtime.device)

    def __len__(self) -> int:
        return sum(-(-len(rows) // self.batch_size) for rows in self._groups())

    def _groups(self) -> list[np.ndarray]:
        """Rows of one shape each (all rows when the split is uniform)."""
        if self.split.uniform_shape is not None or not len(self.split):
            return [np.arange(len(self.split))]
        shapes = [tuple(s) for s in self.split.shapes.tolist()]
        order = sorted(range(len(shapes)), key=lambda i: (shapes[i], i))
        groups: dict[tuple, list[int]] = {}
        for i in order:
            groups.setdefault(shapes[i], []).append(i)
        return [np.array(rows) for rows in groups.values()]

    def _to_device(self, images, masks, index: np.ndarray) -> Batch:
        if not self.resident:
            images, masks = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(masks))
            if self.runtime.device.type == "cuda":  # pinned memory: the copy overlaps the GPU's work
                images, masks = images.pin_memory(), masks.pin_memory()
            images = images.to(self.runtime.device, non_blocking=True)
            masks = masks.to(self.runtime.device, non_blocking=True)
        return Batch(to_float_images(images, self.mean, self.std), masks.long(), index)

    def training_steps(self) -> int:
        """Optimizer steps per epoch: full batches only, as torchvision's reference recipe
        does (drop_last), so every step, and every process under DDP, has a whole batch."""
        return len(self.split) // self.batch_size

    def _crops(self, index: np.ndarray, u: torch.Tensor):
        """The batch's crops, at corners drawn by `u` (n, 2) uniform in [0, 1): from the
        memory map on the host, or, for a split held on the device, by one gather there."""
        if self.resident:
            return self._gathered_crops(index, u)
        ch, cw = self.crop
        u = u.numpy()
        images = np.zeros((len(index), ch, cw, 3), np.uint8)
        masks = np.full((len(index), ch, cw), self.ignore_index, np.uint8)
        for k, i in enumerate(index):
            h, w = self.split.shapes[i]
            y, x = int(u[k, 0] * max(h - ch + 1, 1)), int(u[k, 1] * max(w - cw + 1, 1))
            image, mask = self.split.image(i)[y : y + ch, x : x + cw], self.split.mask(i)[y : y + ch, x : x + cw]
            images[k, : image.shape[0], : image.shape[1]] = image
            masks[k, : mask.shape[0], : mask.shape[1]] = mask
        return images, masks

    def _gathered_crops(self, index: np.ndarray, u: torch.Tensor):
        """The same pixels as the host's loop of per-image copies, as one gather on the
        device: no per-image kernel launches and nothing read back to the host. Corners are
        computed in float64 as the host's loop does (float32 draw times a NumPy int64), so
        the same draws give the same crops."""
        ch, cw = self.crop
        device = self.split.pixels.device
        if self._device_layout is None:  # where each image lies in the flat arrays, copied there once
            offsets = np.concatenate([[0], np.cumsum(self.split.shapes[:, 0] * self.split.shapes[:, 1])[:-1]])
            self._device_layout = (torch.as_tensor(self.split.shapes, dtype=torch.int64, device=device),
                                   torch.as_tensor(offsets, dtype=torch.int64, device=device))
        shapes, offsets = self._device_layout
        rows = torch.as_tensor(index, dtype=torch.int64).to(device, non_blocking=True)
        h, w, start = shapes[rows, 0, None], shapes[rows, 1, None], offsets[rows, None, None]
        u = u.to(device, torch.float64, non_blocking=True)
        y = (u[:, 0, None] * (h - ch + 1).clamp(min=1)).long() + torch.arange(ch, device=device)  # (n, ch) source rows
        x = (u[:, 1, None] * (w - cw + 1).clamp(min=1)).long() + torch.arange(cw, device=device)  # (n, cw) source columns
        inside = (y < h)[:, :, None] & (x < w)[:, None, :]  # an image smaller than the crop is padded
        flat = start + torch.minimum(y, h - 1)[:, :, None] * w[:, :, None] + torch.minimum(x, w - 1)[:, None, :]
        images = torch.where(inside[..., None], self.split.pixels.view(-1, 3)[flat], 0)
        masks = torch.where(inside, self.split.labels[flat], self.ignore_index)
        return images, masks.to(torch.uint8)

    def check_trainable(self) -> None:
        """Training needs a full batch, shared evenly, of one shape: whole images of one shape, or crops."""
        rank, processes = self.shard
        if len(self.split) < self.batch_size:
            raise SegpipeError(f"the {self.split.name} split has {len(self.split)} images, fewer than train.batch_size "
                               f"({self.batch_size}): lower train.batch_size")
        if self.batch_size % processes:
            raise SegpipeError(f"train.batch_size ({self.batch_size}) is the global batch, shared by train.nproc "
                               f"({processes}) processes: make it a multiple of train.nproc")
        if self.crop is None and self.split.uniform_shape is None:
            shapes = sorted({f"{h}x{w}" for h, w in self.split.shapes.tolist()})
            raise SegpipeError(f"the {self.split.name} images differ in shape at the working resolution ({', '.join(shapes[:3])}"
                               f"{', ...' if len(shapes) > 3 else ''}): set train.crop: [height, width] to train on random "
                               "crops, or preprocess.resize.by: exact for one shape")

    def iterate(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled when given a generator; a trailing batch of one is dropped while
        shuffling (training), since batch norm cannot train on a single sample."""
        n = len(self.split)
        rank, processes = self.shard
        if generator is None:
            for rows in self._groups():
                for start in range(0, len(rows), self.batch_size):
                    index = rows[start : start + self.batch_size][rank::processes]
                    if len(index):
                        yield self._to_device(*self.split.stacked(index), index)
            return
        self.check_trainable()
        order = torch.randperm(n, generator=generator).numpy()
        for start in range(0, self.training_steps() * self.batch_size, self.batch_size):
            index = np.sort(order[start : start + self.batch_size])
            # Drawn on the host generator (its state is what a resumed run restores); a GPU-held split
            # takes the draws in one small copy that does not wait for the GPU.
            u = torch.rand(len(index), 2, generator=generator) if self.crop is not None else None
            share = len(index) // processes
            mine = slice(rank * share, (rank + 1) * share)
            arrays = self._crops(index[mine], u[mine]) if self.crop is not None else self.split.stacked(index[mine])
            yield self._to_device(*arrays, index[mine])


def _fits_on_gpu(split: ProcessedSplit, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return split.pixels.nbytes + split.labels.nbytes < free // 4
