"""`cnn`: a plain convolutional encoder with an upsampling head, no skip connections.

The baseline: three pooled stages to stride 8, a 1x1 classifier, then one
bilinear upsampling back to the input size. Boundaries come out coarse, which is
exactly what FCN and U-Net improve on.
"""

from __future__ import annotations

from torch import nn

from segpipe.models.blocks import ConvBlock, SegmentationModel, pool, upsample_to


class CNN(SegmentationModel):
    def __init__(self, in_channels: int, num_classes: int, pooling: str = "max", base_channels: int = 16):
        super().__init__(in_channels, num_classes, pooling, base_channels)
        c = base_channels
        self.encoder = nn.Sequential(
            ConvBlock(in_channels, c), pool(pooling),
            ConvBlock(c, 2 * c), pool(pooling),
            ConvBlock(2 * c, 4 * c), pool(pooling),
            ConvBlock(4 * c, 4 * c),
        )
        self.classifier = nn.Conv2d(4 * c, num_classes, 1)

    def forward(self, x):
        return upsample_to(self.classifier(self.encoder(x)), x)
