"""Batch augmentation on the training device: one affine warp per batch.

Random scale, random crop position and horizontal/vertical flips are folded into
one affine matrix per sample and applied with a single grid_sample, so
augmentation costs one kernel launch per batch instead of per-image Python work.
Images are sampled bilinearly, masks by nearest neighbour; pixels that come from
outside the source image are labelled ignore, never background.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from segpipe.config import AugmentParams


def is_identity(params: AugmentParams) -> bool:
    return params.scale_min == params.scale_max == 1.0 and params.hflip == 0 and params.vflip == 0


def random_affine(params: AugmentParams, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output coordinates to input coordinates."""
    u = torch.rand(n, 5, generator=generator)
    scale = params.scale_min + (params.scale_max - params.scale_min) * u[:, 0]
    flip_x = torch.where(u[:, 1] < params.hflip, -1.0, 1.0)
    flip_y = torch.where(u[:, 2] < params.vflip, -1.0, 1.0)
    # Zooming in by s shows a window 1/s as wide; it may sit anywhere that keeps
    # it inside the image (s > 1), or the image anywhere inside the frame (s < 1).
    reach = (1.0 - 1.0 / scale).abs()
    shift = (u[:, 3:5] * 2 - 1) * reach[:, None] if params.random_crop else torch.zeros(n, 2)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip_x / scale
    theta[:, 1, 1] = flip_y / scale
    theta[:, :, 2] = shift
    return theta


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, params: AugmentParams, ignore_index: int, generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment float images (N,C,H,W) and integer masks (N,H,W) with the same warp.

    Under DDP, `shard` (rank, processes) says which part of the global batch these
    images are: the warps of the whole batch are drawn and this part's are used, so
    the result does not depend on how many processes share the batch."""
    if is_identity(params):
        return images, masks
    rank, processes = shard
    n = images.shape[0]
    theta = random_affine(params, n * processes, generator)[rank * n : (rank + 1) * n].to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Shift labels by one so that the zero padding of grid_sample marks "outside".
    shifted = (masks.float() + 1).unsqueeze(1)
    sampled = F.grid_sample(shifted, grid.to(shifted.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = sampled.squeeze(1).round().long()
    warped_masks = torch.where(sampled == 0, torch.full_like(sampled, ignore_index), sampled - 1)
    return warped, warped_masks.to(masks.dtype)
