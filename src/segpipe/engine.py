"""The train and eval loops: plain functions that do not care whether they run
on one process or many (metrics are reduced once, at the end of evaluate)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from segpipe.config import AugmentParams
from segpipe.data.augment import augment_batch, to_float_images
from segpipe.data.processed import DatasetInfo, ProcessedSplit
from segpipe.device import Runtime
from segpipe.metrics import ConfusionMatrix


@dataclass
class Batches:
    """Batches of a memory-mapped split, moved to the device and normalised there."""

    split: ProcessedSplit
    batch_size: int
    runtime: Runtime
    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self):
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32, device=self.runtime.device)
        self.std = torch.as_tensor(self.std, dtype=torch.float32, device=self.runtime.device)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def iterate(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled when given a generator; a trailing batch of one is dropped while
        shuffling (training), since batch norm cannot train on a single sample."""
        n = len(self.split)
        order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
        pin = self.runtime.device.type == "cuda"
        for start in range(0, n, self.batch_size):
            index = np.sort(order[start : start + self.batch_size])
            if generator is not None and len(index) == 1 and n > 1:
                continue
            images = torch.from_numpy(np.ascontiguousarray(self.split.images[index]))
            masks = torch.from_numpy(np.ascontiguousarray(self.split.masks[index]))
            if pin:
                images, masks = images.pin_memory(), masks.pin_memory()
            images = images.to(self.runtime.device, non_blocking=True)
            masks = masks.to(self.runtime.device, non_blocking=True).long()
            yield to_float_images(images, self.mean, self.std), masks


def _progress(iterable, total: int, description: str):
    """A live bar on a terminal; nothing per batch in logs (one line per epoch instead)."""
    if sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=description, leave=False)
    return iterable


def _prepare(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if runtime.channels_last else images


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
    description: str = "train",
) -> dict:
    model.train()
    total_loss, images_seen, start = 0.0, 0, time.perf_counter()
    for images, masks in _progress(batches.iterate(generator), len(batches), description):
        images, masks = augment_batch(images, masks, augment, ignore_index, generator)
        with runtime.autocast:
            logits = model(_prepare(images, runtime))
            loss = loss_fn(logits, masks)
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
def predict_masks(model: nn.Module, images: np.ndarray, info: DatasetInfo, runtime: Runtime) -> np.ndarray:
    """(N,H,W,3) uint8 images at the training size -> (N,H,W) uint8 class indices."""
    batch = to_float_images(torch.from_numpy(np.array(images, dtype=np.uint8)).to(runtime.device), info.mean, info.std)
    return predict_logits(model, batch, runtime).argmax(dim=1).to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, num_classes: int, ignore_index: int, runtime: Runtime, loss_fn: nn.Module | None = None
) -> tuple[ConfusionMatrix, float | None]:
    """Confusion matrix over the split (reduced across processes) and the mean loss."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, runtime.device)
    total_loss, count = 0.0, 0
    for images, masks in batches.iterate():
        logits = predict_logits(model, images, runtime)
        matrix.update(logits.argmax(dim=1), masks)
        if loss_fn is not None:
            total_loss += float(loss_fn(logits, masks)) * images.shape[0]
            count += images.shape[0]
    matrix.all_reduce()
    return matrix, (total_loss / count if count else None)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global RNG; return the generator that drives shuffling and augmentation."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
