"""torchvision's segmentation models behind segpipe's registry.

Each is built with any number of classes and no weights (random initialisation);
pretrained weights are applied by models/weights.py, only when training starts,
so rebuilding a trained model from its checkpoint never needs a download.
The wrapper returns the main output's logits, like every segpipe model.

torchvision.models is imported when one of these is built, not before: it costs
every stage that merely names the registry more than a second.
"""

from __future__ import annotations

import typing

from torch import nn

from segpipe.errors import SegpipeError
from segpipe.models.blocks import SegmentationModel

NAMES = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "fcn_resnet50")


class TorchvisionModel(SegmentationModel):
    """One of torchvision.models.segmentation's builders (`builder` names it)."""

    builder: str = ""
    # model.pooling and model.base_channels shape segpipe's own models only.
    own_knobs = False

    def __init__(self, in_channels: int, num_classes: int, pooling: str = "max", base_channels: int = 16):
        super().__init__(in_channels, num_classes, pooling, base_channels)
        if in_channels != 3:
            raise SegpipeError(f"{self.builder} takes RGB images (3 channels), not {in_channels}")
        from torchvision.models import segmentation

        build = getattr(segmentation, self.builder)
        extra = {} if self.builder.startswith("lraspp") else {"aux_loss": False}
        # weights_backbone=None explicitly: some builders default to downloading ImageNet weights.
        self.net: nn.Module = build(weights=None, weights_backbone=None, num_classes=num_classes, **extra)

    def forward(self, x):
        return self.net(x)["out"]

    @classmethod
    def whole_weights(cls):
        """The enum of weights for the whole model (e.g. LRASPP_MobileNet_V3_Large_Weights)."""
        from torchvision.models import get_model_weights

        return get_model_weights(cls.builder)

    @classmethod
    def backbone_weights(cls):
        """The enum of weights for its backbone (e.g. MobileNet_V3_Large_Weights)."""
        from torchvision.models import segmentation

        hint = typing.get_type_hints(getattr(segmentation, cls.builder))["weights_backbone"]
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))


def torchvision_model(name: str) -> type[TorchvisionModel]:
    return type(f"Torchvision_{name}", (TorchvisionModel,), {"builder": name, "__doc__": f"torchvision's {name}."})


TORCHVISION_MODELS = {name: torchvision_model(name) for name in NAMES}
