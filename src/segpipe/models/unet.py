"""`unet`: a deep encoder-decoder (Ronneberger et al., 2015).

Four pooled encoder stages; the decoder upsamples and concatenates the encoder
feature of the same resolution at every level, which keeps boundaries sharp.
"""

from __future__ import annotations

import torch
from torch import nn

from segpipe.models.blocks import ConvBlock, SegmentationModel, pool, upsample_to


class UNet(SegmentationModel):
    depth = 4

    def __init__(self, in_channels: int, num_classes: int, pooling: str = "max", base_channels: int = 16):
        super().__init__(in_channels, num_classes, pooling, base_channels)
        widths = [base_channels * 2**i for i in range(self.depth + 1)]
        self.pool = pool(pooling)
        self.down = nn.ModuleList([ConvBlock(in_channels, widths[0])])
        self.down.extend(ConvBlock(widths[i], widths[i + 1]) for i in range(self.depth))
        self.up = nn.ModuleList(ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(self.depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        out = self.down[0](x)
        for block in self.down[1:]:
            skips.append(out)
            out = block(self.pool(out))
        for block, skip in zip(self.up, reversed(skips)):
            out = block(torch.cat([upsample_to(out, skip), skip], dim=1))
        return self.classifier(out)
