"""Everything a training needs, built from params: the model (with its pretrained
weights, which decide how images are normalised), the batches, the loss, the
optimizer, its schedule and the gradient scaler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from segpipe.config import Params
from segpipe.data.batches import Batches
from segpipe.data.processed import DatasetInfo, ProcessedSplit, read_summary
from segpipe.device import Runtime
from segpipe.distributed import Distributed, check_sync_batchnorm
from segpipe.errors import warn
from segpipe.models import Loaded, ModelSpec, SegmentationModel, apply_weights, create_model, spec_for
from segpipe.training.losses import create_loss, resolve_class_weights
from segpipe.training.optim import build_optimizer, build_scheduler


@dataclass
class TrainingParts:
    spec: ModelSpec
    info: DatasetInfo                # the data contract, with the pretrained weights' normalisation when they bring one
    model: SegmentationModel         # what checkpoints and evaluation use
    stepping: torch.nn.Module        # what the training steps call: the model, or DDP and/or torch.compile around it
    train_batches: Batches
    val_batches: Batches
    input_shape: tuple[int, int]     # what the model trains on: the crop, or the stored image shape
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    weights: Loaded | None = None    # the pretrained weights it started from (their sha256 goes on the run)

    @property
    def train_images(self) -> int:
        return len(self.train_batches.split)


def build_parts(params: Params, info: DatasetInfo, processed_dir, runtime: Runtime, group: Distributed,
                say: Callable[..., None]) -> TrainingParts:
    spec = spec_for(params.model, info.num_classes)
    # The model first: pretrained weights decide how images are normalised.
    model = create_model(spec)
    loaded = apply_weights(model, params.model.weights)
    if loaded is not None:
        say(f"starting from {loaded.description}", flush=True)
        if loaded.mean is not None:
            info = replace(info, mean=loaded.mean, std=loaded.std)
    if not model.own_knobs:
        say(f"note: model.pooling and model.base_channels shape cnn, fcn and unet only; {spec.name} does not use them",
            flush=True)
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    stepping = prepare_for_steps(model, params.train, runtime, group)

    crop = tuple(params.train.crop) if params.train.crop else None
    shard = (group.rank, group.world)
    train_split = ProcessedSplit.load(processed_dir, "train")
    too_large = oversized_crop(crop, train_split.shapes)
    if too_large and group.is_main:
        warn(too_large)
    train_batches = Batches(train_split, params.train.batch_size, runtime, info.mean, info.std, crop, info.ignore_index,
                            shard)
    # Validation batches as large as training ones: train reads no evaluate.* param, so changing one
    # re-runs evaluate and report only.
    val_batches = Batches(ProcessedSplit.load(processed_dir, "val"), params.train.batch_size, runtime, info.mean,
                          info.std, shard=shard)
    train_batches.check_trainable()

    class_weights = resolve_class_weights(params.loss.class_weights, info.num_classes, read_summary(processed_dir))
    loss_fn = create_loss(params.loss.name, info.num_classes, info.ignore_index, class_weights).to(runtime.device)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, train_batches.training_steps())
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    return TrainingParts(spec, info, model, stepping, train_batches, val_batches, tuple(crop or train_split.uniform_shape),
                         loss_fn, optimizer, scheduler, scaler, loaded)


# A crop this many times the largest image (in pixels) is mostly padding: memory and time for nothing.
CROP_PADDING_LIMIT = 4


def oversized_crop(crop: tuple[int, int] | None, shapes) -> str | None:
    """What to say when train.crop is many times the stored images (a crop of [1000, 1000] on 64 px
    images pads every crop to a megapixel: gigabytes and tens of minutes an epoch for nothing)."""
    if crop is None or not len(shapes):
        return None
    largest = max((tuple(int(v) for v in shape) for shape in shapes), key=lambda hw: hw[0] * hw[1])
    ratio = crop[0] * crop[1] / (largest[0] * largest[1])
    if ratio <= CROP_PADDING_LIMIT:
        return None
    return (f"train.crop {crop[0]}x{crop[1]} is {ratio:.0f} times the largest training image at the working resolution "
            f"({largest[0]}x{largest[1]}): every crop is mostly padding, which costs memory and time and teaches nothing; "
            f"set train.crop to at most [{largest[0]}, {largest[1]}], or null to train on whole images")


def prepare_for_steps(model: torch.nn.Module, params, runtime: Runtime, group: Distributed) -> torch.nn.Module:
    """What the training steps call: the model itself, or DDP around it (gradients averaged over
    the processes, batch norm synchronised when asked), compiled when asked. Checkpoints and
    evaluation use `model` itself, whose weights these share."""
    stepping = model
    if group.active:
        if params.sync_batchnorm:
            check_sync_batchnorm(params.sync_batchnorm, runtime.device.type)
            stepping = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        stepping = torch.nn.parallel.DistributedDataParallel(stepping, device_ids=device_ids)
    if params.compile:
        stepping = torch.compile(stepping)
    return stepping
