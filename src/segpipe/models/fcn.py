"""`fcn`: FCN-8s (Long, Shelhamer and Darrell, 2015) on a compact VGG-style encoder.

Five pooled stages; class scores from stride 32 are upsampled and fused with
scores from the stride-16 and stride-8 features (the skip connections that give
FCN-8s its name), then upsampled to the input size.
"""

from __future__ import annotations

from torch import nn

from segpipe.models.blocks import ConvBlock, SegmentationModel, pool, upsample_to


class FCN8s(SegmentationModel):
    def __init__(self, in_channels: int, num_classes: int, pooling: str = "max", base_channels: int = 16):
        super().__init__(in_channels, num_classes, pooling, base_channels)
        c = base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 8 * c]
        stages, previous = [], in_channels
        for width in widths:
            stages.append(nn.Sequential(ConvBlock(previous, width), pool(pooling)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(
            nn.Conv2d(widths[4], 16 * c, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
            nn.Conv2d(16 * c, num_classes, 1),
        )
        self.score_pool4 = nn.Conv2d(widths[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(widths[2], num_classes, 1)

    def forward(self, x):
        features = []
        out = x
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        pool3, pool4, pool5 = features[2], features[3], features[4]
        score = self.head(pool5)
        score = upsample_to(score, pool4) + self.score_pool4(pool4)
        score = upsample_to(score, pool3) + self.score_pool3(pool3)
        return upsample_to(score, x)
