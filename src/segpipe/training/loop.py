"""The training loop: one epoch over the training split, as a plain function that
does not care whether it runs in one process or many."""

from __future__ import annotations

import time

import torch
from torch import nn

from segpipe.config import AugmentParams
from segpipe.data.batches import Batches
from segpipe.device import Runtime
from segpipe.distributed import all_reduce
from segpipe.errors import SegpipeError
from segpipe.models.forward import prepare_input
from segpipe.progress import progress
from segpipe.training.augment import augment_batch


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
    for step, (images, masks, _) in enumerate(progress(batches.iterate(generator), steps, description), start=1):
        images, masks = augment_batch(images, masks, augment, ignore_index, generator, batches.shard)
        with runtime.autocast:
            logits = model(prepare_input(images, runtime))
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
    # Every process stops at the same step, or none does (a no-op in one process).
    sums = all_reduce(torch.stack([total_loss.float(), torch.tensor(float(images_seen), device=total_loss.device)]))
    all_reduce(first_bad_step, op="max")
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


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (initialisation, dropout) and return the generator that
    drives shuffling, crops and augmentation. Python's `random` is left alone: MLflow
    draws run names from it, and seeding it would give every run the same name."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
