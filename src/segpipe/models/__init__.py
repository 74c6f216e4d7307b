"""Models by name: the registry that params.yaml's model.name looks up."""

from __future__ import annotations

from dataclasses import dataclass

from segpipe.models.blocks import SegmentationModel
from segpipe.models.cnn import CNN
from segpipe.models.fcn import FCN8s
from segpipe.models.torchvision_models import TORCHVISION_MODELS
from segpipe.models.unet import UNet
from segpipe.models.weights import Loaded, apply_weights
from segpipe.registry import Registry

MODELS: Registry[type[SegmentationModel]] = Registry("model.name", "model", {
    "cnn": CNN,
    "fcn": FCN8s,
    "unet": UNet,
    **TORCHVISION_MODELS,
})

__all__ = ["MODELS", "Loaded", "ModelSpec", "SegmentationModel", "apply_weights", "create_model", "spec_for"]


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint stores to rebuild the same architecture."""

    name: str
    num_classes: int
    pooling: str
    base_channels: int
    in_channels: int = 3


def create_model(spec: ModelSpec) -> SegmentationModel:
    return MODELS[spec.name](in_channels=spec.in_channels, num_classes=spec.num_classes, pooling=spec.pooling,
                             base_channels=spec.base_channels)


def spec_for(params, num_classes: int) -> ModelSpec:
    """The spec params.yaml's model section describes, for a dataset of `num_classes`."""
    return ModelSpec(MODELS.check(params.name), num_classes, params.pooling, params.base_channels)
