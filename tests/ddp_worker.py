"""Run by tests/test_distributed.py as one process, or as two under torchrun: two epochs of
segpipe's training loop on a model without batch norm, weights saved by the main process."""

import sys

import numpy as np
import torch
from torch import nn

from segpipe.config import AugmentParams
from segpipe.data.batches import Batches
from segpipe.data.processed import ProcessedSplit
from segpipe.device import runtime_for
from segpipe.distributed import join
from segpipe.training.loop import train_one_epoch
from segpipe.training.losses import create_loss


def split() -> ProcessedSplit:
    rng = np.random.default_rng(0)
    shapes = [(20, 30), (24, 18), (16, 20), (18, 22)] * 4
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    masks = [rng.integers(0, 3, (h, w)).astype(np.uint8) for h, w in shapes]
    return ProcessedSplit.from_arrays("train", images, masks, [str(i) for i in range(len(shapes))])


def main(out: str) -> None:
    runtime = runtime_for("cpu", False, False)
    group = join(runtime.device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    stepping = nn.parallel.DistributedDataParallel(model) if group.active else model
    # Crops that fit every image and flips: every process's share has as many labelled pixels.
    batches = Batches(split(), 8, runtime, [0.5] * 3, [0.25] * 3, crop=(12, 12), shard=(group.rank, group.world))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    augment = AugmentParams(scale_min=1.0, scale_max=1.0, random_crop=False, hflip=0.5, vflip=0.5)
    generator = torch.Generator().manual_seed(0)
    losses = [train_one_epoch(stepping, batches, create_loss("cross_entropy", 3, 255, None), optimizer, scheduler,
                              torch.amp.GradScaler("cpu", enabled=False), runtime, augment, 255, generator, epoch)["loss"]
              for epoch in (1, 2)]
    if group.is_main:
        torch.save({"state": model.state_dict(), "losses": losses}, out)
    group.close()


if __name__ == "__main__":
    main(sys.argv[1])
