"""Models by name: the registry that params.yaml's model.name looks up."""

from __future__ import annotations

from dataclasses import dataclass

from segpipe.errors import SegpipeError
from segpipe.models.blocks import SegmentationModel
from segpipe.models.cnn import CNN
from segpipe.models.fcn import FCN8s
from segpipe.models.smp_models import SMP_MODELS
from segpipe.models.torchvision_models import TORCHVISION_MODELS
from segpipe.models.unet import UNet
from segpipe.models.weights import Loaded, apply_weights
from segpipe.registry import Registry

MODELS: Registry[type[SegmentationModel]] = Registry("model.name", "model", {
    "cnn": CNN,
    "fcn": FCN8s,
    "unet": UNet,
    **TORCHVISION_MODELS,
    **SMP_MODELS,
})

__all__ = ["MODELS", "Loaded", "ModelSpec", "SegmentationModel", "apply_weights", "create_model", "describe", "spec_for"]


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint stores to rebuild the same architecture."""

    name: str
    num_classes: int
    pooling: str
    base_channels: int
    in_channels: int = 3
    # The smp models' encoder (model.encoder); None for the others. Defaulted, so checkpoints
    # written before it existed (format 2 without it) still load.
    encoder: str | None = None


def create_model(spec: ModelSpec) -> SegmentationModel:
    cls = MODELS[spec.name]
    encoder = {"encoder": spec.encoder} if cls.uses_encoder else {}
    return cls(in_channels=spec.in_channels, num_classes=spec.num_classes, pooling=spec.pooling,
               base_channels=spec.base_channels, **encoder)


def spec_for(params, num_classes: int) -> ModelSpec:
    """The spec params.yaml's model section describes, for a dataset of `num_classes`."""
    cls = MODELS[params.name]
    if params.encoder is not None and not cls.uses_encoder:
        # A key that would not take effect stops the run rather than being ignored.
        raise SegpipeError(f"model.encoder: {params.encoder!r} chooses the encoder of the smp_* models; {params.name} has "
                           "none. Set model.encoder: null, or pick an smp model (e.g. model.name: smp_unet)")
    return ModelSpec(params.name, num_classes, params.pooling, params.base_channels, encoder=params.encoder)


def describe(spec: ModelSpec) -> str:
    """The model and the knobs that shape it, for titles: unet (max pooling), smp_fpn (mobilenet_v2 encoder), or
    a torchvision model's name alone (model.pooling shapes the own models only: naming it beside another misleads)."""
    model = MODELS[spec.name]
    if model.uses_encoder:
        return f"{spec.name} ({spec.encoder} encoder)"
    return f"{spec.name} ({spec.pooling} pooling)" if model.own_knobs else spec.name
