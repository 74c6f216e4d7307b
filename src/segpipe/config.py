"""params.yaml -> a typed, validated config.

Every knob lives in params.yaml and nowhere else. Every key is required and
unknown keys are errors, so a misspelt key fails loudly before any work instead
of silently falling back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from segpipe.errors import SegpipeError

PARAMS_FILE = "params.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _one_of(registry_name: str):
    """A validator that accepts the keys of a registry, looked up lazily so the
    registry (not a copy of its names) is the single source of valid choices."""

    def check(value: str) -> str:
        choices = _registries()[registry_name]
        if value not in choices:
            raise ValueError(f"unknown {registry_name} {value!r}; valid choices: {', '.join(sorted(choices))}")
        return value

    return AfterValidator(check)


def _registries() -> dict[str, Any]:
    from segpipe.data.sources import SOURCES
    from segpipe.losses import LOSSES
    from segpipe.models import MODELS

    return {"dataset": SOURCES, "model": MODELS, "loss": LOSSES}


PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ShapesParams(Strict):
    num_images: PositiveInt
    image_size: Annotated[int, Field(ge=16)]
    max_objects: PositiveInt
    seed: int


class OxfordPetParams(Strict):
    # Where the trimap's uncertain border goes: ignored, merged into pet or
    # background (binary masks), or kept as a third class.
    border: Literal["ignore", "pet", "background", "class"]


GreyOrColour = Annotated[int, Field(ge=0, le=255)] | Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]


class FolderParams(Strict):
    images: str | None
    masks: str | None
    classes: Annotated[list[str], Field(min_length=2, max_length=255)]
    values: list[GreyOrColour] | None
    ignore_value: GreyOrColour | None
    threshold: Annotated[int, Field(ge=1, le=255)] | None
    resize: Literal["image_to_mask", "mask_to_image"] | None
    splits: dict[Literal["train", "val", "test"], str] | None

    @model_validator(mode="after")
    def _consistent(self):
        if self.threshold is not None and len(self.classes) != 2:
            raise ValueError("threshold splits greyscale masks into two classes: list exactly two classes")
        if self.threshold is not None and self.values is not None:
            raise ValueError("set either threshold or values, not both")
        if self.values is not None:
            if len(self.values) != len(self.classes):
                raise ValueError(f"values has {len(self.values)} entries for {len(self.classes)} classes: give one per class")
            if len({isinstance(v, list) for v in self.values}) > 1:
                raise ValueError("values must be all grey levels or all RGB colours")
        return self


class DataParams(Strict):
    dataset: Annotated[str, _one_of("dataset")]
    # Base URL (or local folder) holding the official archives under their own
    # file names, used instead of the datasets' home sites.
    mirror: str | None
    shapes: ShapesParams
    oxford_pet: OxfordPetParams
    folder: FolderParams

    @model_validator(mode="after")
    def _folder_is_described(self):
        if self.dataset == "folder":
            unset = [key for key in ("images", "masks") if getattr(self.folder, key) is None]
            if unset:
                raise ValueError(f"data.dataset is folder: set data.folder.{' and data.folder.'.join(unset)}")
        return self


class SplitParams(Strict):
    seed: int
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 so that some images are left to train on")
        return self


class PreprocessParams(Strict):
    size: PositiveInt
    on_bad_sample: Literal["error", "skip"]
    split: SplitParams


class ModelParams(Strict):
    name: Annotated[str, _one_of("model")]
    pooling: Literal["max", "avg"]
    base_channels: PositiveInt


class LossParams(Strict):
    name: Annotated[str, _one_of("loss")]
    # One weight per class (in manifest order), or null for unweighted.
    class_weights: list[Annotated[float, Field(ge=0.0)]] | None


class AugmentParams(Strict):
    scale_min: Annotated[float, Field(gt=0.0)]
    scale_max: Annotated[float, Field(gt=0.0)]
    random_crop: bool
    hflip: Probability
    vflip: Probability

    @model_validator(mode="after")
    def _ordered(self):
        if self.scale_min > self.scale_max:
            raise ValueError("scale_min must not exceed scale_max")
        return self


class TrainParams(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"]
    seed: int
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["adamw", "sgd"]
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    schedule: Literal["cosine", "poly"]
    warmup_epochs: Annotated[int, Field(ge=0)]
    amp: bool
    channels_last: bool


class EvaluateParams(Strict):
    batch_size: PositiveInt


class ReportParams(Strict):
    num_examples: Annotated[int, Field(ge=0)]


class MlflowParams(Strict):
    experiment: Annotated[str, Field(min_length=1)]
    # false: an unreachable store is a warning, and results stay in metrics/ only.
    required: bool
    # Register the trained model under this name in the model registry, or null.
    register_model: Annotated[str, Field(min_length=1)] | None


class Params(Strict):
    data: DataParams
    preprocess: PreprocessParams
    model: ModelParams
    loss: LossParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams
    mlflow: MlflowParams


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing; add it to params.yaml (see the README's list of knobs)"
    if kind == "extra_forbidden":
        parent = error["loc"][:-1]
        valid = _field_names(Params, parent)
        return f"{key}: unknown key; valid keys here: {', '.join(valid)}"
    message = error["msg"].removeprefix("Value error, ")
    # Show the offending value, unless the message already quotes it or it is a whole section.
    if kind != "value_error" and not isinstance(error.get("input"), (dict, type(None))):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}" if key else message


def _field_names(model: type[BaseModel], path: tuple) -> list[str]:
    for part in path:
        annotation = model.model_fields[part].annotation
        model = annotation
    return list(model.model_fields)


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise SegpipeError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise SegpipeError(f"{source} is invalid:\n{problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SegpipeError(f"{path} not found; run from the project root, where params.yaml lives") from None
    except yaml.YAMLError as exc:
        raise SegpipeError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, Any]:
    """Dotted keys -> values, the way MLflow and `dvc params diff` show them."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", params.model_dump())
    return flat
