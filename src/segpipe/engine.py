"""The train and eval loops: plain functions that do not care whether they run
on one process or many (metrics are reduced once, at the end of evaluate)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
import torch.distributed as dist
from torch.nn import functional as F

from segpipe.config import AugmentParams
from segpipe.data.augment import augment_batch, to_float_images
from segpipe.data.processed import ProcessedSplit
from segpipe.device import Runtime
from segpipe.errors import SegpipeError
from segpipe.metrics import ConfusionMatrix, confusion_matrix


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

    def _crops(self, index: np.ndarray, u: np.ndarray):
        ch, cw = self.crop
        if self.resident:
            device = self.runtime.device
            images = torch.zeros((len(index), ch, cw, 3), dtype=torch.uint8, device=device)
            masks = torch.full((len(index), ch, cw), self.ignore_index, dtype=torch.uint8, device=device)
        else:
            images = np.zeros((len(index), ch, cw, 3), np.uint8)
            masks = np.full((len(index), ch, cw), self.ignore_index, np.uint8)
        for k, i in enumerate(index):
            h, w = self.split.shapes[i]
            y, x = int(u[k, 0] * max(h - ch + 1, 1)), int(u[k, 1] * max(w - cw + 1, 1))
            image, mask = self.split.image(i)[y : y + ch, x : x + cw], self.split.mask(i)[y : y + ch, x : x + cw]
            images[k, : image.shape[0], : image.shape[1]] = image
            masks[k, : mask.shape[0], : mask.shape[1]] = mask
        return images, masks

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
            u = torch.rand(len(index), 2, generator=generator).numpy() if self.crop is not None else None
            share = len(index) // processes
            mine = slice(rank * share, (rank + 1) * share)
            arrays = self._crops(index[mine], u[mine]) if self.crop is not None else self.split.stacked(index[mine])
            yield self._to_device(*arrays, index[mine])


def _fits_on_gpu(split: ProcessedSplit, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return split.pixels.nbytes + split.labels.nbytes < free // 4


def _progress(iterable, total: int, description: str):
    """A live bar on a terminal; nothing per batch in logs (one line per epoch instead)."""
    if sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=description, leave=False)
    return iterable


def _prepare(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if runtime.channels_last else images


class TrainingDiverged(SegpipeError):
    """The loss stopped being a finite number."""


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    augment: AugmentParams,
    ignore_index: int,
    generator: torch.Generator,
    epoch: int = 1,
    description: str = "train",
) -> dict:
    """One pass over the training split. A loss that is not finite raises
    TrainingDiverged naming the epoch and step; the check stays on the device
    (no per-step synchronisation) and is read once, at the end of the epoch."""
    model.train()
    total_loss, images_seen, start = torch.zeros((), device=runtime.device), 0, time.perf_counter()
    first_bad_step = torch.full((), -1, dtype=torch.int64, device=runtime.device)
    step = 0
    steps = batches.training_steps()
    for step, (images, masks, _) in enumerate(_progress(batches.iterate(generator), steps, description), start=1):
        images, masks = augment_batch(images, masks, augment, ignore_index, generator, batches.shard)
        with runtime.autocast:
            logits = model(_prepare(images, runtime))
            loss = loss_fn(logits, masks)
        bad = ~torch.isfinite(loss.detach())
        first_bad_step = torch.where(bad & (first_bad_step < 0), torch.full_like(first_bad_step, step), first_bad_step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * images.shape[0]
        images_seen += images.shape[0]
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dist.is_available() and dist.is_initialized():  # every process stops at the same step, or none does
        sums = torch.stack([total_loss.float(), torch.tensor(float(images_seen), device=total_loss.device)])
        dist.all_reduce(sums)
        dist.all_reduce(first_bad_step, op=dist.ReduceOp.MAX)
        total_loss, images_seen = sums[0], int(sums[1])
    bad_step = int(first_bad_step)
    if bad_step >= 0:
        raise TrainingDiverged(f"the loss became nan or infinite at epoch {epoch}, step {bad_step} of {step}")
    state = [t for t in model.state_dict().values() if t.is_floating_point()]  # weights and batch-norm statistics
    if not all(torch.isfinite(t).all() for t in state):
        raise TrainingDiverged(f"the model's weights became nan or infinite during epoch {epoch}")
    return {
        "loss": float(total_loss) / max(images_seen, 1),
        "images": images_seen,
        "seconds": seconds,
        "images_per_second": images_seen / seconds if seconds > 0 else 0.0,
    }


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    with runtime.autocast:
        return model(_prepare(images, runtime)).float()


@torch.inference_mode()
def predict_masks(model: nn.Module, images: list[np.ndarray], mean, std, runtime: Runtime) -> list[np.ndarray]:
    """(H, W, 3) uint8 images at the working resolution -> (H, W) uint8 class indices, one at a time."""
    masks = []
    for image in images:
        batch = to_float_images(torch.from_numpy(np.array(image, dtype=np.uint8))[None].to(runtime.device), mean, std)
        masks.append(predict_logits(model, batch, runtime).argmax(dim=1)[0].to(torch.uint8).cpu().numpy())
    return masks


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, num_classes: int, ignore_index: int, runtime: Runtime, loss_fn: nn.Module | None = None
) -> tuple[ConfusionMatrix, float | None]:
    """Confusion matrix over the split at the working resolution (reduced across
    processes) and the mean loss."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    loss_and_count = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    for images, masks, _ in batches.iterate():
        logits = predict_logits(model, images, runtime)
        matrix.update(logits.argmax(dim=1), masks)
        if loss_fn is not None:
            loss_and_count += torch.stack([loss_fn(logits, masks).double() * images.shape[0],
                                           torch.tensor(float(images.shape[0]), dtype=torch.float64, device=runtime.device)])
    matrix.all_reduce()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_and_count)
    total_loss, count = loss_and_count.tolist()
    return matrix, (total_loss / count if count else None)


@dataclass
class TestScores:
    native: ConfusionMatrix     # against the original masks at their own resolution: the headline
    working: ConfusionMatrix    # against the stored masks at the working resolution
    per_image: np.ndarray       # (N, C, C) native confusion matrix of every image, for intervals and rankings


@torch.inference_mode()
def score_test(model: nn.Module, batches: Batches, num_classes: int, ignore_index: int, runtime: Runtime) -> TestScores:
    """Predict each test image at the working resolution, upsample the logits to
    the image's original size, and score against the original mask."""
    model.eval()
    split = batches.split
    native = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    working = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    # On the device until the end: one copy to the host, not one synchronisation per image.
    per_image = torch.zeros((len(split), num_classes, num_classes), dtype=torch.int64, device=runtime.device)
    for images, masks, index in batches.iterate():
        logits = predict_logits(model, images, runtime)
        working.update(logits.argmax(dim=1), masks)
        for k, row in enumerate(index):
            truth = _native_truth(split, row, runtime.device)
            upsampled = logits[k : k + 1]
            if truth.shape != upsampled.shape[-2:]:
                upsampled = F.interpolate(upsampled, size=truth.shape, mode="bilinear", align_corners=False)
            counts = confusion_matrix(upsampled.argmax(dim=1)[0], truth, num_classes, ignore_index)
            native.counts += counts
            per_image[row] = counts
    native.all_reduce()
    working.all_reduce()
    return TestScores(native, working, per_image.cpu().numpy())


def _native_truth(split, row: int, device: torch.device) -> torch.Tensor:
    """A test image's original mask on the device: from the memory map, or already there
    when the split is held on the GPU (a tensor, which numpy cannot take from a GPU)."""
    mask = split.native_mask(row)
    return mask.to(device) if isinstance(mask, torch.Tensor) else torch.tensor(mask, device=device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialisation, dropout) and return the generator that
    drives shuffling, crops and augmentation. Python's `random` is left alone: MLflow
    draws run names from it, and seeding it would give every run the same name."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
