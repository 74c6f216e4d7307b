"""Checkpoints that carry everything needed to predict with, or resume, a model:
architecture, weights, the data contract (classes, size, normalisation), params,
and for the last checkpoint the optimizer, schedule and random states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segpipe.atomic import atomic_file
from segpipe.errors import SegpipeError
from segpipe.models import create_model, model_spec
from segpipe.models.blocks import SegmentationModel

FORMAT = 1


def save_checkpoint(path: Path, model: SegmentationModel, **contents: Any) -> None:
    state = {"format": FORMAT, "model": {"spec": model_spec(model), "state": model.state_dict()}, **contents}
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SegpipeError(f"{path} not found; run the train stage first (dvc repro train)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise SegpipeError(f"{path} is not a readable segpipe checkpoint: {exc}") from None
    if checkpoint.get("format") != FORMAT:
        raise SegpipeError(f"{path} has checkpoint format {checkpoint.get('format')}, expected {FORMAT}; retrain it")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], device: torch.device | str = "cpu") -> SegmentationModel:
    spec = checkpoint["model"]["spec"]
    model = create_model(spec["name"], spec["num_classes"], spec["pooling"], spec["base_channels"], spec["in_channels"])
    model.load_state_dict(checkpoint["model"]["state"])
    return model.to(device).eval()


class Checkpointer:
    """Keeps the best epoch by validation mIoU (weights and data contract) and the
    latest epoch with everything a resume needs (optimizer, schedule, scaler, RNG)."""

    def __init__(self, best_path: Path, last_path: Path):
        self.best_path, self.last_path = best_path, last_path
        self.best_miou = -1.0

    def save(self, model: SegmentationModel, val_miou: float | None, training_state: dict[str, Any], **contents: Any) -> bool:
        """Write last (always) and best (when val_miou improved); True if it improved."""
        improved = (val_miou or 0.0) > self.best_miou
        if improved:
            self.best_miou = val_miou or 0.0
            save_checkpoint(self.best_path, model, **contents)
        save_checkpoint(self.last_path, model, **contents, best_miou=self.best_miou, **training_state)
        return improved
