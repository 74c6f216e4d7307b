"""params.yaml -> a typed, validated config.

Every knob lives in params.yaml and nowhere else. Every key is required, unknown
keys are errors and types are strict (`epochs: true` is not 1), so a misspelt
key or a wrong value fails loudly before any work instead of silently falling
back to something else.

This module imports only errors.py, so that every stage can read params cheaply. Named choices
(model.name, loss.name, data.dataset) are checked by their registries, which
the stages consult before any work.

No key may be named `size` or `nfiles`, at any depth: DVC leaves such keys out
of its run-cache key (treeverse/dvc#10296), so changing one would restore stale
outputs. tests/test_config.py guards this.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.errors import SegpipeError

PARAMS_FILE = "params.yaml"


class SegpipeConfigError(SegpipeError):
    """params.yaml is missing, unreadable or invalid: a SegpipeError like every other user-facing problem."""


class Strict(BaseModel):
    # strict: no coercion (true is not 1, "3" is not 3); no inf or nan anywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
HeightWidth = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


class ShapesParams(Strict):
    num_images: PositiveInt
    image_size: Annotated[int, Field(ge=16)]
    max_objects: PositiveInt
    seed: int


class OxfordPetParams(Strict):
    # Where the trimap's uncertain border goes: ignored, merged into pet or
    # background (binary masks), or kept as a third class.
    border: Literal["ignore", "pet", "background", "class"]


# A grey level (8- or 16-bit masks) or an [r, g, b] colour.
GreyOrColour = (
    Annotated[int, Field(ge=0, le=65535)]
    | Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
)


class SplitFolders(Strict):
    images: str
    masks: str


class FolderParams(Strict):
    images: str | None
    masks: str | None
    # One folder pair per split, for layouts such as train/ trainannot/ val/ valannot/.
    split_folders: dict[Literal["train", "val", "test"], SplitFolders] | None
    classes: Annotated[list[str], Field(min_length=2, max_length=255)]
    values: list[GreyOrColour] | None
    ignore_value: GreyOrColour | None
    threshold: Annotated[int, Field(ge=1, le=65535)] | None
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
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must have distinct names")
        if self.split_folders is not None and (self.images is not None or self.masks is not None or self.splits):
            raise ValueError("split_folders names every split's folders: leave images, masks and splits null")
        return self


class DataParams(Strict):
    dataset: str  # checked against segpipe.data.sources.SOURCES
    # Base URL (or local folder) holding the official archives under their own
    # file names, used instead of the datasets' home sites.
    mirror: str | None
    shapes: ShapesParams
    oxford_pet: OxfordPetParams
    folder: FolderParams

    @model_validator(mode="after")
    def _folder_is_described(self):
        if self.dataset == "folder" and self.folder.split_folders is None:
            unset = [key for key in ("images", "masks") if getattr(self.folder, key) is None]
            if unset:
                raise ValueError(f"data.dataset is folder: set data.folder.{' and data.folder.'.join(unset)} "
                                 "(or data.folder.split_folders)")
        return self


class ResizeParams(Strict):
    """The working resolution images are stored and trained at."""

    by: Literal["shorter_side", "longer_side", "factor", "exact"]
    # shorter_side / longer_side: that side's length in pixels (the other keeps the
    # aspect ratio); factor: a scale factor; exact: [height, width].
    to: PositiveInt | PositiveFloat | HeightWidth

    @model_validator(mode="after")
    def _to_fits_by(self):
        if self.by in ("shorter_side", "longer_side") and not isinstance(self.to, int):
            raise ValueError(f"by {self.by} takes a length in pixels in `to`, such as 128 (got {self.to!r})")
        if self.by == "factor" and isinstance(self.to, list):
            raise ValueError(f"by factor takes a number in `to`, such as 0.5 (got {self.to!r})")
        if self.by == "exact" and not isinstance(self.to, list):
            raise ValueError(f"by exact takes [height, width] in `to`, such as [96, 128] (got {self.to!r})")
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
    resize: ResizeParams
    # Images whose shorter side is below this are rejected (listed like other bad files).
    min_side: PositiveInt
    on_bad_sample: Literal["error", "skip"]
    # The same image content in two splits: warn (listed in summary.json) or error.
    on_leak: Literal["warn", "error"]
    split: SplitParams
    # Processes that decode and resize (0: one per CPU core); the output is the same bytes whatever the count.
    workers: Annotated[int, Field(ge=0)]


class ModelParams(Strict):
    name: str  # checked against segpipe.models.MODELS
    pooling: Literal["max", "avg"]
    base_channels: PositiveInt
    # none | a torchvision weights name (e.g. MobileNet_V3_Large_Weights.IMAGENET1K_V1) | a local .pt/.pth file
    weights: Annotated[str, Field(min_length=1)]
    # The smp_* models' encoder: one of smp's (resnet34, efficientnet-b0, mit_b0, ...) or tu-<timm name>; null for the others.
    encoder: Annotated[str, Field(min_length=1)] | None


class LossParams(Strict):
    name: str  # checked against segpipe.training.losses.LOSSES
    # null (unweighted), median_frequency (from the training split's pixel counts),
    # or one weight per class in the dataset's class order.
    class_weights: Literal["median_frequency"] | list[Annotated[float, Field(ge=0.0)]] | None

    @field_validator("class_weights")
    @classmethod
    def _some_weight(cls, weights):
        if isinstance(weights, list) and not any(w > 0 for w in weights):
            raise ValueError("all zero, so no pixel would count; give at least one class a positive weight, or set "
                             "class_weights: null")
        return weights


class AugmentParams(Strict):
    scale_min: PositiveFloat
    scale_max: PositiveFloat
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
    # [height, width] random crops of the stored images, or null to train on whole images.
    crop: HeightWidth | None
    optimizer: Literal["adamw", "sgd"]
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    schedule: Literal["cosine", "poly"]
    warmup_epochs: Annotated[int, Field(ge=0)]
    amp: bool
    channels_last: bool
    # torch.compile the model (worth it on a GPU for long trainings; the first epoch pays the compile).
    compile: bool
    # Processes that share each batch under DDP: GPUs on this machine, or CPU processes on gloo.
    nproc: PositiveInt
    # Batch-norm statistics over the global batch instead of each process's share (nproc > 1).
    sync_batchnorm: bool


class EvaluateParams(Strict):
    batch_size: PositiveInt


class ReportParams(Strict):
    num_examples: Annotated[int, Field(ge=0)]
    bootstrap_samples: Annotated[int, Field(ge=0)]


class MlflowParams(Strict):
    experiment: Annotated[str, Field(min_length=1)]
    # false: an unreachable store is a warning, and results stay in metrics/ only.
    required: bool
    # Log the trained model into the run (a torch.export program: seconds, and an artifact per run).
    log_model: bool
    # Register the trained model under this name in the model registry, or null.
    register_model: Annotated[str, Field(min_length=1)] | None

    @model_validator(mode="after")
    def _registered_models_are_logged(self):
        if self.register_model is not None and not self.log_model:
            raise ValueError("register_model needs the model logged: set log_model: true, or register_model: null")
        return self


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
    key = ".".join(str(part) for part in error["loc"] if not _is_union_branch(part))
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing; add it to params.yaml (see the README's list of knobs)"
    if kind == "extra_forbidden":
        parent = tuple(p for p in error["loc"][:-1] if not _is_union_branch(p))
        valid = _field_names(Params, parent)
        return f"{key}: unknown key; valid keys here: {', '.join(valid)}"
    message = error["msg"].removeprefix("Value error, ")
    # Show the offending value, unless the message already quotes it or it is a whole section.
    # A list too long or too short: the message gives the count and the limit, and the list itself (300 class
    # names, say) would bury them.
    if kind not in ("value_error", "too_long", "too_short") and not isinstance(error.get("input"), (dict, type(None))):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}" if key else message


def _is_union_branch(part: Any) -> bool:
    # Pydantic names the branch of a union it tried ("int", "list[int]", "function-after[...]").
    return isinstance(part, str) and ("[" in part or part in ("int", "float", "str", "bool", "list", "constrained-int"))


def _field_names(model: Any, path: tuple) -> list[str]:
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside `X | None` or `dict[K, X]`, else the annotation itself."""
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise SegpipeConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {p}" for p in _unique([_describe(e) for e in exc.errors()]))
        raise SegpipeConfigError(f"{source} is invalid:\n{problems}") from None


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `1e-3` is a number (PyYAML's YAML 1.1 reads it as a string),
    as DVC and every other YAML 1.2 tool read it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_params_file(path: str | Path = PARAMS_FILE) -> tuple[Any, str]:
    """The parsed YAML and the SHA-256 of the file's bytes."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SegpipeConfigError(f"{path} not found; run from the project root, where params.yaml lives") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SegpipeConfigError(f"{path} is not valid YAML: {exc}") from None
    return raw, hashlib.sha256(text).hexdigest()


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    raw, _ = read_params_file(path)
    return parse_params(raw, str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values, the way MLflow and `dvc params diff` show them."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat |= flatten(item, f"{prefix}.{key}" if prefix else key)
    return flat


def params_digest(params: Params) -> str:
    """SHA-256 of the params' canonical JSON: equal for equal settings, however the file is formatted."""
    return hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()
