"""The training setup every train-loop variant shares, built the way
stages/train.py builds it from params.yaml, so the benchmark trains what users
train: the project's model, loss, optimizer, schedule and augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segpipe.config import AugmentParams, Params
from segpipe.device import Runtime
from segpipe.models import create_model, spec_for
from segpipe.training.losses import create_loss, resolve_class_weights
from segpipe.training.optim import build_optimizer, build_scheduler

# Augmentation that augment_batch passes through untouched: for loaders that
# have already augmented every sample themselves.
NO_AUGMENTATION = AugmentParams(scale_min=1.0, scale_max=1.0, random_crop=False, hflip=0.0, vflip=0.0)


@dataclass
class TrainingSetup:
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    runtime: Runtime
    generator: torch.Generator


def training_setup(params: Params, runtime: Runtime, summary: dict, steps_per_epoch: int, epochs: int) -> TrainingSetup:
    """A fresh model and optimizer; every variant starts from the same weights."""
    num_classes = len(summary["classes"])
    torch.manual_seed(params.train.seed)
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model = create_model(spec_for(params.model, num_classes)).to(runtime.device, memory_format=memory_format)
    weights = resolve_class_weights(params.loss.class_weights, num_classes, summary)
    loss_fn = create_loss(params.loss.name, num_classes, summary["ignore_index"], weights).to(runtime.device)
    optimizer = build_optimizer(model, params.train)
    # As many epochs as the benchmark runs, so the schedule never runs past its end.
    scheduler = build_scheduler(optimizer, params.train.model_copy(update={"epochs": epochs}), steps_per_epoch)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    return TrainingSetup(model, loss_fn, optimizer, scheduler, scaler, runtime,
                         torch.Generator().manual_seed(params.train.seed))
