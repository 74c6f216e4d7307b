"""segmentation_models_pytorch's architectures on any encoder smp accepts, behind segpipe's registry.

`model.name: smp_<architecture>` picks the decoder (smp_unet, smp_fpn, smp_segformer, ...) and
`model.encoder` the backbone: one of smp's own encoders (resnet34, efficientnet-b0, mobilenet_v2,
mit_b0, ...) or any timm model as `tu-<timm name>` (tu-convnext_tiny, tu-resnet50d, ...).
Each is built with no weights (random initialisation); pretrained encoder weights are applied
by models/weights.py, only when training starts, through smp's and timm's own download code, so
rebuilding a trained model from its checkpoint never needs a download.

Most encoders need input sides divisible by their total stride (32). The wrapper pads every
input on the bottom and right (edge pixels repeated) to the next multiple and crops the logits
back, inside forward: training, evaluation at native size, the report, prediction windows, ONNX
and the MLflow program all take any height and width. Padding only at the far edges keeps the
pixel grid aligned with the stride, as prediction windows expect (serving/inference.py).

smp and timm are imported when one of these is built, not before: importing them costs every
stage that merely names the registry seconds.
"""

from __future__ import annotations

import difflib
import math

from torch.nn import functional as F

from segpipe.errors import SegpipeError, shortlist
from segpipe.models.blocks import SegmentationModel

# model.name -> smp's class name, for every architecture smp 0.6 offers.
ARCHITECTURES = {
    "smp_unet": "Unet", "smp_unetplusplus": "UnetPlusPlus", "smp_fpn": "FPN", "smp_pspnet": "PSPNet",
    "smp_deeplabv3": "DeepLabV3", "smp_deeplabv3plus": "DeepLabV3Plus", "smp_linknet": "Linknet", "smp_manet": "MAnet",
    "smp_pan": "PAN", "smp_upernet": "UPerNet", "smp_segformer": "Segformer", "smp_dpt": "DPT",
}
# PAN's feature pyramid attention halves its 1/16 feature map three more times and doubles it back:
# its input sides must divide by 16 x 8.
DIVISORS = {"PAN": 128}
TIMM_PREFIX = "tu-"
KEY = "model.encoder"
# ImageNet's statistics: what smp's own encoders' pretrained weights expect (timm's carry their own).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class SmpModel(SegmentationModel):
    """One of smp's architectures (`architecture` names its class) on the encoder `encoder`."""

    architecture: str = ""
    # model.pooling and model.base_channels shape segpipe's own models only.
    own_knobs = False
    uses_encoder = True

    def __init__(self, in_channels: int, num_classes: int, pooling: str = "max", base_channels: int = 16,
                 encoder: str | None = None):
        super().__init__(in_channels, num_classes, pooling, base_channels)
        self.encoder_name = check_encoder(encoder, self.model_name)
        import segmentation_models_pytorch as smp

        # DPT's ViT encoders take any (patch-divisible) size only when asked to.
        extra = {"dynamic_img_size": True} if self.architecture == "DPT" else {}
        try:
            self.net = getattr(smp, self.architecture)(encoder_name=self.encoder_name, encoder_weights=None,
                                                       in_channels=in_channels, classes=num_classes, **extra)
        except (ValueError, KeyError, RuntimeError, TypeError, AssertionError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise SegpipeError(f"{KEY}: smp's {self.architecture} cannot be built on the encoder {self.encoder_name!r} "
                               f"({reason}); choose another encoder or architecture") from None
        # A multiple of every stride the encoder and decoder divide by (32 for five 2x reductions).
        self.divisor = math.lcm(DIVISORS.get(self.architecture, 32), int(getattr(self.net.encoder, "output_stride", 32)))
        # segpipe pads to that multiple itself (forward), so smp's own refusal of other sizes never fires.
        self.net.requires_divisible_input_shape = False

    @property
    def model_name(self) -> str:
        return next(name for name, cls in ARCHITECTURES.items() if cls == self.architecture)

    def forward(self, x):
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.divisor, (-width) % self.divisor
        logits = self.net(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"))
        return logits[..., :height, :width]

    @property
    def is_timm(self) -> bool:
        return self.encoder_name.startswith(TIMM_PREFIX)

    def pretrained_normalisation(self) -> tuple[list[float], list[float]]:
        """The mean and std this encoder's pretrained weights expect: timm's configuration says so
        for timm encoders (no download); smp's own encoders were trained on ImageNet statistics."""
        if self.is_timm:
            import timm

            config = timm.models.get_pretrained_cfg(self.encoder_name.removeprefix(TIMM_PREFIX))
            if config is not None and getattr(config, "mean", None) and getattr(config, "std", None):
                return [float(v) for v in config.mean], [float(v) for v in config.std]
        return list(IMAGENET_MEAN), list(IMAGENET_STD)

    def weight_choices(self) -> list[str]:
        """The pretrained names model.weights takes for this encoder."""
        if self.is_timm:
            return ["imagenet"]
        from segmentation_models_pytorch.encoders import encoders

        return sorted(encoders[self.encoder_name]["pretrained_settings"])

    def fetch_encoder_weights(self, name: str, key: str) -> tuple[dict, list[float], list[float], str | None]:
        """The encoder's pretrained state dict `name`, through smp's own loader (the Hugging Face
        hub and its cache, for smp's encoders and timm's): its tensors, the normalisation it
        expects, and the cached file it came from (for its sha256), where one is known."""
        choices = self.weight_choices()
        if name not in choices:
            raise SegpipeError(f"{key}: {name!r} is no pretrained weights of the encoder {self.encoder_name}; it has "
                               f"{', '.join(choices) or 'none'} (or give a local .pt/.pth file, or none)")
        import segmentation_models_pytorch as smp

        extra = {"dynamic_img_size": True} if self.architecture == "DPT" else {}
        try:
            # A second build, with weights, by smp's own code: the download, cache and checks are smp's and timm's.
            source = getattr(smp, self.architecture)(encoder_name=self.encoder_name, in_channels=self.in_channels,
                                                     classes=self.num_classes,
                                                     encoder_weights=True if self.is_timm else name, **extra)
        except Exception as exc:  # offline: huggingface_hub and timm raise many types
            raise SegpipeError(self._not_cached(name, key, exc)) from None
        mean, std = self.pretrained_normalisation()
        if not self.is_timm:
            from segmentation_models_pytorch.encoders import get_preprocessing_params

            settings = get_preprocessing_params(self.encoder_name, pretrained=name)  # from the cache, beside the weights
            mean, std = [float(v) for v in settings["mean"]], [float(v) for v in settings["std"]]
        return source.encoder.state_dict(), mean, std, self._cached_file(name)

    def _hub_file(self, name: str) -> tuple[str, str, str | None]:
        """(repository, file, revision) of the weights on the Hugging Face hub."""
        if self.is_timm:
            import timm

            config = timm.models.get_pretrained_cfg(self.encoder_name.removeprefix(TIMM_PREFIX))
            hub_id = getattr(config, "hf_hub_id", None) or f"timm/{self.encoder_name.removeprefix(TIMM_PREFIX)}"
            return hub_id, "model.safetensors", None
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[self.encoder_name]["pretrained_settings"][name]
        return settings["repo_id"], "model.safetensors", settings["revision"]

    def _cached_file(self, name: str) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        repo, filename, revision = self._hub_file(name)
        found = try_to_load_from_cache(repo, filename, revision=revision)
        return found if isinstance(found, str) else None

    def _not_cached(self, name: str, key: str, exc: Exception) -> str:
        from huggingface_hub import constants

        repo, filename, revision = self._hub_file(name)
        folder = f"{constants.HF_HUB_CACHE}/models--{repo.replace('/', '--')}"
        at = f" at revision {revision}" if revision else ""
        return (f"{key}: {name} weights of the encoder {self.encoder_name} are not in the Hugging Face cache ({folder}) "
                f"and could not be downloaded ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}). "
                f"On a machine with a network, run once to fill the cache (or download {filename} of "
                f"https://huggingface.co/{repo}{at} there, or set HF_HOME), or set {key} to a local .pt/.pth file of the "
                "encoder's weights, or none")


def check_encoder(encoder: str | None, model_name: str) -> str:
    """The encoder's name if smp accepts it; else an error naming the nearest valid ones."""
    if encoder is None:
        raise SegpipeError(f"{KEY}: {model_name} needs an encoder; set {KEY} to one of smp's (resnet34, efficientnet-b0, "
                           f"mobilenet_v2, mit_b0, ...) or a timm model as {TIMM_PREFIX}<name> (e.g. {TIMM_PREFIX}resnet50d)")
    if encoder.startswith(TIMM_PREFIX):
        import timm

        name = encoder.removeprefix(TIMM_PREFIX)
        if timm.is_model(name.split(".")[0]):
            return encoder
        known = [TIMM_PREFIX + n for n in timm.list_models()]
        raise SegpipeError(f"{KEY}: {encoder!r} is no timm model; nearest: {_nearest(encoder, known)} (timm has "
                           f"{len(known)}: timm.list_models())")
    from segmentation_models_pytorch.encoders import get_encoder_names

    known = get_encoder_names()
    if encoder in known:
        return encoder
    raise SegpipeError(f"{KEY}: unknown encoder {encoder!r}; nearest: {_nearest(encoder, known)}. smp has {len(known)} "
                       f"({shortlist(sorted(known), 8)}), and any timm model as {TIMM_PREFIX}<name>")


def _nearest(name: str, known: list[str]) -> str:
    return ", ".join(difflib.get_close_matches(name, known, n=5, cutoff=0.5)) or "none close"


def smp_model(name: str, architecture: str) -> type[SmpModel]:
    return type(f"Smp_{architecture}", (SmpModel,), {"architecture": architecture,
                                                     "__doc__": f"segmentation_models_pytorch's {architecture}."})


SMP_MODELS = {name: smp_model(name, architecture) for name, architecture in ARCHITECTURES.items()}

