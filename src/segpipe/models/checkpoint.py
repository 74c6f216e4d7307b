"""models/model.pt: the trained model, with one loader that evaluate, report,
predict and export share.

A ModelCheckpoint (a DVC output) holds results only: the architecture, the
weights and the data contract a prediction needs (classes, ignore label, working
resolution, normalisation). Nothing machine-local, so the same training gives the
same bytes, and a teammate who pulls it can use it with their own MLflow store (the
link to the run lives beside it: see tracking/runs.py). model_metadata is that
contract in the words exported models carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from segpipe.atomic import atomic_file
from segpipe.data.processed import DatasetInfo
from segpipe.errors import SegpipeError
from segpipe.models import MODELS, ModelSpec, create_model
from segpipe.models.blocks import SegmentationModel

MODEL_FORMAT = 2


INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass(frozen=True)
class ModelCheckpoint:
    spec: ModelSpec
    state: dict[str, torch.Tensor]
    data: DatasetInfo
    # The (height, width) the model was trained on: the crop, or the stored image shape.
    input_shape: tuple[int, int]
    epoch: int
    val: dict

    def to_dict(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "spec": asdict(self.spec), "state": self.state, "data": asdict(self.data),
                "input_shape": list(self.input_shape), "epoch": self.epoch, "val": self.val}

    def save(self, path: Path) -> None:
        with atomic_file(path, "wb") as handle:
            torch.save(self.to_dict(), handle)

    def build_model(self, device: torch.device | str = "cpu", source: Path | str = "the checkpoint") -> SegmentationModel:
        """The model with its weights, in eval mode on `device`."""
        if self.spec.name not in MODELS:
            raise SegpipeError(f"{source} holds a model {self.spec.name!r} that this version of segpipe does not know "
                               f"(known: {', '.join(sorted(MODELS))}); retrain it (dvc repro train)")
        model = create_model(self.spec)
        try:
            model.load_state_dict(self.state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0:2]
            raise SegpipeError(f"{source}: its weights do not fit a {self.spec.name} with {self.spec.num_classes} classes "
                               f"({' '.join(first)[:300]}); the file was changed or comes from another version: retrain it "
                               "(dvc repro train)") from None
        return model.to(device).eval()

    def check_data(self, info: DatasetInfo, source: Path | str) -> None:
        """The model must have been trained on the classes it is scored on."""
        if list(self.data.classes) != list(info.classes):
            raise SegpipeError(
                f"{source} was trained on classes {self.data.classes} ({len(self.data.classes)}), but data/processed holds "
                f"{info.classes} ({len(info.classes)}): retrain it on this data (dvc repro train), or restore the model "
                "that belongs to it (dvc checkout / dvc pull)")

    @classmethod
    def from_dict(cls, raw: dict, source: Path | str) -> "ModelCheckpoint":
        if raw.get("format") != MODEL_FORMAT:
            raise SegpipeError(f"{source} has checkpoint format {raw.get('format')}, expected {MODEL_FORMAT}; retrain it "
                               "(dvc repro train)")
        try:
            return cls(spec=ModelSpec(**raw["spec"]), state=raw["state"], data=DatasetInfo(**raw["data"]),
                       input_shape=tuple(raw["input_shape"]), epoch=int(raw["epoch"]), val=raw["val"])
        except (KeyError, TypeError) as exc:
            raise SegpipeError(f"{source} is not a complete segpipe model checkpoint ({exc}); retrain it") from None


def load_torch_file(path: Path, what: str, device: torch.device | str = "cpu") -> dict:
    if not path.exists():
        raise SegpipeError(f"{path} not found; run the train stage first (dvc repro train)")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or truncated file
        raise SegpipeError(f"{path} is not a readable segpipe {what}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(raw, dict):
        raise SegpipeError(f"{path} is not a segpipe {what}")
    return raw


def load_model_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> ModelCheckpoint:
    path = Path(path)
    return ModelCheckpoint.from_dict(load_torch_file(path, "checkpoint", device), path)


def model_metadata(checkpoint: ModelCheckpoint) -> dict:
    """What must travel with an exported model for anyone to use it correctly."""
    data = checkpoint.data
    return {
        "model": checkpoint.spec.name,
        **({"encoder": checkpoint.spec.encoder} if checkpoint.spec.encoder else {}),
        "classes": list(data.classes),
        "ignore_index": data.ignore_index,
        "resize": dict(data.resize),
        "training_input_shape": list(checkpoint.input_shape),
        "mean": list(data.mean),
        "std": list(data.std),
        "input": f"{INPUT_NAME}: float32 (N, 3, H, W), RGB at the working resolution (resize: shorter_side/longer_side "
                 "scale that side to `to`, factor scales by `to`, exact is [height, width]; bilinear), divided by 255, "
                 "then (x - mean) / std per channel",
        "output": f"{OUTPUT_NAME}: float32 (N, classes, H, W); resize bilinearly to the photo's size, then argmax over "
                  "classes is the mask (class index per pixel)",
    }
