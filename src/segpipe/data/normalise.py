"""Images as the network takes them: float, channels first, normalised per channel.

Training, evaluation, the report and prediction all normalise with this one
function, by the statistics the checkpoint records (the data's own, or a
pretrained encoder's)."""

from __future__ import annotations

import torch


def to_float_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 normalised by per-channel mean and std
    (sequences or tensors, in [0, 1] units)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std
