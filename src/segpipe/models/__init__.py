"""Models by name: the registry that params.yaml's model.name looks up."""

from __future__ import annotations

from segpipe.models.blocks import SegmentationModel
from segpipe.models.cnn import CNN
from segpipe.models.fcn import FCN8s
from segpipe.models.unet import UNet

MODELS: dict[str, type[SegmentationModel]] = {
    "cnn": CNN,
    "fcn": FCN8s,
    "unet": UNet,
}


def create_model(name: str, num_classes: int, pooling: str, base_channels: int, in_channels: int = 3) -> SegmentationModel:
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, pooling=pooling, base_channels=base_channels)


def model_spec(model: SegmentationModel) -> dict:
    """What a checkpoint stores to rebuild the same architecture."""
    name = next(k for k, v in MODELS.items() if type(model) is v)
    return {
        "name": name,
        "num_classes": model.num_classes,
        "pooling": model.pooling,
        "base_channels": model.base_channels,
        "in_channels": model.in_channels,
    }
