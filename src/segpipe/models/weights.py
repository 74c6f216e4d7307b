"""model.weights: the weights a training starts from.

    none                                   random initialisation
    MobileNet_V3_Large_Weights.IMAGENET1K_V1   a torchvision weights name: the backbone's
                                           (a new head for your classes: what most users
                                           want), or the whole model's (its head is replaced
                                           when your class count differs)
    path/to/weights.pt                     a local state dict: a whole model, a torchvision
                                           classification backbone, or a segpipe checkpoint

Named weights are fetched by torchvision's own loader and cached in TORCH_HOME
($TORCH_HOME/hub/checkpoints); offline, a missing file is an error that says
where to put it. Models with pretrained weights are fed images normalised the way
those weights were trained, not by the dataset's: one mechanism for every model.
`Loaded` carries that mean and std; training writes it into the data contract the
checkpoint stores (DatasetInfo.mean/std), and evaluation, the report, prediction,
ONNX and the MLflow model all read it from there. Where it comes from:
    torchvision models                     ImageNet statistics
    smp models, named encoder weights      the weights' own configuration (smp's config.json
                                           beside the weights; timm's pretrained config)
    smp models, a local file               the encoder's pretrained normalisation (timm's config
                                           for tu- encoders, ImageNet for smp's own)
    any model, a file that records one     that one: a segpipe checkpoint's data contract, or
                                           a {"state_dict": ..., "mean": [...], "std": [...]} file
Own models from a file that records none keep the dataset's statistics.

smp encoders' named weights (model.weights: imagenet, ssl, ..., as smp lists them per
encoder; imagenet for tu- timm encoders) are fetched by smp's and timm's own loaders
into the Hugging Face cache (HF_HOME, ~/.cache/huggingface/hub); see models/smp_models.py.
Whatever file the weights came from, its sha256 travels in Loaded to the MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segpipe.errors import SegpipeError, shortlist
from segpipe.hashing import file_sha256
from segpipe.models.blocks import SegmentationModel
from segpipe.models.smp_models import SmpModel
from segpipe.models.torchvision_models import TorchvisionModel

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
KEY = "model.weights"


@dataclass(frozen=True)
class Loaded:
    """What was loaded, for the log: a sentence, the normalisation it implies, and the
    sha256 of the file the tensors came from (for the MLflow run), where one is known."""

    description: str
    mean: list[float] | None = None
    std: list[float] | None = None
    sha256: str | None = None

    def tags(self, setting: str) -> dict[str, str]:
        """The MLflow tags that say which weights a training started from."""
        return {"weights": setting, **({"weights_sha256": self.sha256} if self.sha256 else {})}


def is_file_setting(setting: str) -> bool:
    """model.weights names a local file (rather than none or a named set of weights)."""
    return setting != "none" and (setting.endswith((".pt", ".pth")) or "/" in setting or Path(setting).exists())


def check_weights_setting(setting: str) -> None:
    """What the validate stage can check before any output is removed: a weights file must be there."""
    if is_file_setting(setting) and not Path(setting).is_file():
        raise SegpipeError(f"{KEY}: {setting} not found; give a .pt/.pth state dict (keep it under DVC: dvc add), a "
                           "named set of weights, or none")


def apply_weights(model: SegmentationModel, setting: str) -> Loaded | None:
    """Load model.weights into a freshly built model; None for `none`."""
    if setting == "none":
        return None
    if is_file_setting(setting):
        return _load_file(model, Path(setting))
    if isinstance(model, SmpModel):
        return _load_encoder_named(model, setting)
    return _load_named(model, setting)


def _load_encoder_named(model: SmpModel, name: str) -> Loaded:
    state, mean, std, cached = model.fetch_encoder_weights(name, KEY)
    model.net.encoder.load_state_dict(state)
    return Loaded(f"encoder weights {name} of {model.encoder_name}" + (f" ({cached})" if cached else ""), mean, std,
                  file_sha256(cached) if cached else None)


def _load_named(model: SegmentationModel, name: str) -> Loaded:
    from torchvision.models import get_weight

    if not isinstance(model, TorchvisionModel):
        raise SegpipeError(f"{KEY}: {name!r} is torchvision's; it applies to torchvision models (lraspp_..., deeplabv3_..., "
                           "fcn_resnet50), not to this one (smp_* models take their encoder's: imagenet, ...). Use none, "
                           "or a local file of this model's weights")
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise SegpipeError(f"{KEY}: {name!r} is no torchvision weights name; use for example "
                           f"{model.backbone_weights().__name__}.{next(iter(model.backbone_weights())).name} (backbone) or "
                           f"{model.whole_weights().__name__}.{next(iter(model.whole_weights())).name} (whole model), "
                           "a local .pt/.pth file, or none") from None
    whole, backbone = model.whole_weights(), model.backbone_weights()
    if not isinstance(weights, (whole, backbone)):
        raise SegpipeError(f"{KEY}: {name} is for another architecture; {model.builder} takes {backbone.__name__}.* "
                           f"(backbone) or {whole.__name__}.* (whole model)")
    state, cached = _download(weights, name)
    sha256 = file_sha256(cached) if cached.is_file() else None
    if isinstance(weights, backbone):
        _load_backbone(model, state, name)
        return Loaded(f"backbone weights {name}", IMAGENET_MEAN, IMAGENET_STD, sha256)
    loaded, skipped = _load_matching(model, {f"net.{k}": v for k, v in state.items()}, name)
    note = f" (new head for {model.num_classes} classes: {len(skipped)} tensors left at random)" if skipped else ""
    return Loaded(f"whole-model weights {name}{note}", IMAGENET_MEAN, IMAGENET_STD, sha256)


def _download(weights, name: str) -> tuple[dict, Path]:
    from torch.hub import get_dir

    cached = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True), cached
    except (OSError, RuntimeError) as exc:  # offline: URLError is an OSError
        raise SegpipeError(f"{KEY}: {name} is not in torchvision's cache ({cached}) and could not be downloaded "
                           f"({str(exc).splitlines()[0][:200]}). On a machine with a network, run once to fill the cache "
                           f"(or download {weights.url} to that path, or set TORCH_HOME), or set {KEY} to a local file "
                           "or none") from None


def _read_file(path: Path) -> tuple[dict, tuple[list[float], list[float]] | None]:
    """The state dict in a file, and the normalisation the file records, if it records one."""
    if not path.is_file():
        raise SegpipeError(f"{KEY}: {path} not found; give a .pt/.pth state dict, a torchvision weights name, or none")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign file
        raise SegpipeError(f"{KEY}: {path} is not a readable state dict ({str(exc).splitlines()[0][:200]})") from None
    normalisation = _recorded_normalisation(raw)
    for key in ("state", "state_dict", "model"):  # a segpipe checkpoint, or a training script's {"state_dict": ...}
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise SegpipeError(f"{KEY}: {path} holds no state dict of tensors")
    return raw, normalisation


def _recorded_normalisation(raw) -> tuple[list[float], list[float]] | None:
    """A segpipe checkpoint's data contract, or a file's own top-level mean and std (3 numbers each)."""
    if not isinstance(raw, dict):
        return None
    source = raw["data"] if isinstance(raw.get("data"), dict) and "mean" in raw["data"] else raw
    mean, std = source.get("mean"), source.get("std")
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3:
        return [float(v) for v in mean], [float(v) for v in std]
    return None


def _load_file(model: SegmentationModel, path: Path) -> Loaded:
    state, recorded = _read_file(path)
    sha256 = file_sha256(path)
    normalisation = recorded or _pretrained_normalisation(model)
    own = set(model.state_dict())
    candidates = [state, {f"net.{k}": v for k, v in state.items()}]
    if isinstance(model, (TorchvisionModel, SmpModel)):  # a classification backbone's, or an smp encoder's
        candidates.append(_as_backbone(state) if isinstance(model, TorchvisionModel) else
                          {f"net.encoder.{k}": v for k, v in state.items()})
    best = max(candidates, key=lambda c: len(own & set(c)))
    if isinstance(model, TorchvisionModel) and best is candidates[-1] and len(own & set(best)):
        _load_backbone(model, state, str(path))
        return Loaded(f"backbone weights from {path}", *normalisation, sha256)
    if isinstance(model, SmpModel) and best is candidates[-1] and len(own & set(best)):
        _load_encoder(model, state, str(path))
        return Loaded(f"{model.encoder_name} encoder weights from {path}", *normalisation, sha256)
    loaded, skipped = _load_matching(model, best, str(path))
    note = f"; {len(skipped)} left at random ({shortlist(skipped, 3)})" if skipped else ""
    return Loaded(f"{loaded} tensors from {path}{note}", *normalisation, sha256)


def _pretrained_normalisation(model: SegmentationModel) -> tuple[list[float] | None, list[float] | None]:
    """What a file that records no normalisation was trained with, as far as the model knows;
    (None, None) for own models: they keep the dataset's statistics."""
    if isinstance(model, SmpModel):
        return model.pretrained_normalisation()
    if isinstance(model, TorchvisionModel):
        return IMAGENET_MEAN, IMAGENET_STD
    return None, None


def _load_encoder(model: SmpModel, state: dict, source: str) -> None:
    """An encoder's state dict (smp's encoder.state_dict(), or a classification model's that the
    encoder is built from): every encoder tensor must be there, a classifier's extra ones may be."""
    encoder: nn.Module = model.net.encoder
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        what = f"lacks {len(missing)} of its tensors ({shortlist(missing, 3)})" if missing else \
            f"has other shapes for {shortlist(bad, 3)}"
        raise SegpipeError(f"{KEY}: {source} {what}; is it the weights of the encoder {model.encoder_name}?")
    encoder.load_state_dict({k: state[k] for k in own})


def _as_backbone(state: dict) -> dict:
    """A torchvision classification model's state dict under the segmentation model's backbone names
    (MobileNetV3's `features.N` become `backbone.N`; ResNet's layers keep their names)."""
    return {f"net.backbone.{k.removeprefix('features.')}": v for k, v in state.items() if not k.startswith(("classifier.", "fc."))}


def _load_backbone(model: TorchvisionModel, state: dict, source: str) -> None:
    mapped = {k.removeprefix("net.backbone."): v for k, v in _as_backbone(state).items()}
    backbone: nn.Module = model.net.backbone
    missing = [k for k in backbone.state_dict() if k not in mapped]
    if missing:
        raise SegpipeError(f"{KEY}: {source} lacks {len(missing)} of the backbone's tensors ({shortlist(missing, 3)}); "
                           f"is it {model.backbone_weights().__name__}?")
    wanted = {k: mapped[k] for k in backbone.state_dict()}  # the backbone drops a classifier's last layers
    bad = [k for k, v in wanted.items() if v.shape != backbone.state_dict()[k].shape]
    if bad:
        raise SegpipeError(f"{KEY}: {source} has other shapes for {shortlist(bad, 3)}; is it {model.backbone_weights().__name__}?")
    backbone.load_state_dict(wanted)


def _load_matching(model: nn.Module, state: dict, source: str) -> tuple[int, list[str]]:
    """Load every tensor whose name and shape match; the rest (a head for another class
    count) stays at random. Refuse a file that matches too little to be this model's."""
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    skipped = sorted(k for k in own if k not in matching)
    if len(matching) < len(own) / 2:
        raise SegpipeError(f"{KEY}: {source} matches only {len(matching)} of the model's {len(own)} tensors; it is the "
                           "weights of another architecture")
    model.load_state_dict(matching, strict=False)
    return len(matching), skipped
