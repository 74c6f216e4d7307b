"""Building blocks shared by every model."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pool(kind: str) -> nn.Module:
    """2x downsampling by `max` or `avg` pooling (params: model.pooling). Rounding
    up keeps odd and small inputs from shrinking to nothing in deep encoders."""
    return nn.MaxPool2d(2, ceil_mode=True) if kind == "max" else nn.AvgPool2d(2, ceil_mode=True)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> batch norm -> ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to `like`'s spatial size: works for any input size, not
    only multiples of the network's stride."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """Base class: (N, in_channels, H, W) -> logits (N, num_classes, H, W)."""

    # Whether model.pooling and model.base_channels shape this model.
    own_knobs = True
    # Whether model.encoder chooses this model's encoder (the smp models).
    uses_encoder = False

    def __init__(self, in_channels: int, num_classes: int, pooling: str, base_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pooling = pooling
        self.base_channels = base_channels
