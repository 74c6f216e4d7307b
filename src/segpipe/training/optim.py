"""Optimizer and learning-rate schedule from params (train.*)."""

from __future__ import annotations

import math

import torch
from torch import nn

from segpipe.config import TrainParams


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters, as in torchvision's references.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernels = _kernels(model)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0, **kernels)
    return torch.optim.AdamW(groups, lr=params.lr, **kernels)


def _kernels(model: nn.Module) -> dict:
    """On a GPU, the fused step: one kernel for every parameter instead of a few per tensor,
    its step counts kept on the GPU (the for-each step reads them on the host), and a
    GradScaler's inf check folded in instead of read back every step. Elsewhere PyTorch's
    default, so CPU runs, and the figures measured with them, are unchanged."""
    devices = {p.device.type for p in model.parameters()}
    return {"fused": True} if devices == {"cuda"} else {}


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup to the base rate, then cosine or poly(0.9) decay towards zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 0.9


def build_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int):
    total = params.epochs * steps_per_epoch
    warmup = min(params.warmup_epochs * steps_per_epoch, total - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, params.schedule))
