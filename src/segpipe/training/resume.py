"""Resuming an interrupted training where it stopped.

The state of the last completed epoch (model, optimizer, schedule, scaler, random
states, history, best model so far, MLflow run) is written to a file DVC does not
delete (models/resume/state.pt, not a DVC output). The next run continues from it
only when its inputs are the same ones: the fingerprint covers the training params,
the processed data and the code train runs (its code deps in dvc.yaml), so a
changed learning rate, dataset or training code starts over instead of mixing two
trainings, while an edit to code train never runs keeps the state.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from segpipe.atomic import atomic_file
from segpipe.config import Params
from segpipe.errors import SegpipeError, warn
from segpipe.hashing import update_from_file
from segpipe.models.checkpoint import ModelCheckpoint, load_torch_file

RESUME_FORMAT = 1
# The params sections a training depends on (as dvc.yaml lists them for train).
TRAINING_SECTIONS = ("model", "loss", "augment", "train")


@dataclass
class ResumeState:
    """Everything needed to go on after the last completed epoch."""

    fingerprint: str         # of the inputs: a resume only continues the same training
    epoch: int               # the last completed epoch
    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: dict                # {"torch": ByteTensor, "generator": ByteTensor}
    history: list[dict]
    best: ModelCheckpoint | None
    mlflow_run_id: str | None
    mlflow_run_name: str
    started: float           # wall-clock seconds spent in earlier attempts
    extra: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        payload = {**{k: v for k, v in self.__dict__.items() if k != "best"}, "format": RESUME_FORMAT,
                   "best": self.best.to_dict() if self.best else None}
        with atomic_file(path, "wb") as handle:
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: Path) -> "ResumeState":
        raw = load_torch_file(path, "resume state")
        if raw.pop("format", None) != RESUME_FORMAT:
            raise SegpipeError(f"{path} is a resume state of another version; delete it to train from the start")
        best = raw.pop("best")
        return cls(**raw, best=ModelCheckpoint.from_dict(best, path) if best else None)


class Resume:
    """A training's progress across interruptions: the epoch it goes on from, the history
    and best model so far, its MLflow run, and the state it saves after every epoch."""

    def __init__(self, fingerprint: str, path: Path, parts, generator: torch.Generator, state: ResumeState | None,
                 run_name: str):
        self.fingerprint, self.path, self.parts, self.generator = fingerprint, path, parts, generator
        self.resumed = state is not None
        self.next_epoch = state.epoch + 1 if state else 1
        self.history: list[dict] = state.history if state else []
        self.best: ModelCheckpoint | None = state.best if state else None
        self.run_id = state.mlflow_run_id if state else None
        self.run_name = state.mlflow_run_name if state else run_name
        self._earlier_seconds, self._started = (state.started if state else 0.0), time.perf_counter()

    @classmethod
    def or_start(cls, params: Params, parts, generator: torch.Generator, path: Path, processed_dir: Path,
                 project_root: Path, run_name: str, is_main: bool) -> "Resume":
        """Resume from `path` when it holds this same training (every process restores it), else start."""
        weights = parts.weights.sha256 if parts.weights is not None else None
        fingerprint = training_fingerprint(params, processed_dir, train_code(project_root), weights)
        state, why_not = previous_training(path, fingerprint)
        if why_not and is_main:
            warn(why_not)
        if state is not None:
            parts.model.load_state_dict(state.model)
            parts.optimizer.load_state_dict(state.optimizer)
            parts.scheduler.load_state_dict(state.scheduler)
            parts.scaler.load_state_dict(state.scaler)
            restore_random_states(state.rng, generator)
        return cls(fingerprint, path, parts, generator, state, run_name)

    def seconds(self) -> float:
        """Wall-clock seconds of this training, earlier attempts included."""
        return self._earlier_seconds + time.perf_counter() - self._started

    def record(self, epoch: int, row: dict, val: dict, parts) -> None:
        """An epoch's history row; its weights, when validation mIoU is the best so far."""
        self.history.append(row)
        if self.best is None or (val["miou"] or 0.0) > (self.best.val["miou"] or 0.0):
            weights = {k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()}
            self.best = ModelCheckpoint(parts.spec, weights, parts.info, tuple(parts.input_shape), epoch, val)

    def save(self, epoch: int, run_id: str | None) -> None:
        """The state after `epoch` (0: before the first), for the main process to write."""
        self.run_id = run_id
        parts = self.parts
        ResumeState(
            fingerprint=self.fingerprint, epoch=epoch, model=parts.model.state_dict(),
            optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
            scaler=parts.scaler.state_dict(), rng=random_states(self.generator), history=self.history, best=self.best,
            mlflow_run_id=run_id, mlflow_run_name=self.run_name, started=self.seconds(),
        ).save(self.path)


def train_code(project_root: Path) -> list[Path]:
    """The code train runs, as dvc.yaml's train stage lists it: its script and modules
    (a folder dep stands for the .py files in it). Editing any other code, the exporter
    or the team stack say, keeps an interrupted training resumable."""
    dvc_yaml = project_root / "dvc.yaml"
    try:
        deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["train"]["deps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise SegpipeError(f"{dvc_yaml}: cannot read the train stage's deps ({exc}); restore dvc.yaml from git") from None
    files: set[Path] = set()
    for dep in deps:
        path = project_root / dep
        if dep.startswith(("src/", "stages/")):
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return sorted(files)


def training_fingerprint(params: Params, processed_dir: Path, code: list[Path], weights_sha256: str | None = None) -> str:
    """Of everything that decides a training's result: params, data, code, and the bytes of the pretrained
    weights it starts from (a DVC-tracked weights file can change under the same model.weights)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"weights:{weights_sha256}".encode())
    dumped = params.model_dump()
    digest.update(json.dumps({name: dumped[name] for name in TRAINING_SECTIONS}, sort_keys=True).encode())
    data = sorted(p for p in processed_dir.rglob("*") if p.is_file())
    for root, files in ((processed_dir, data), (None, code)):
        for path in files:
            digest.update(str(path.relative_to(root) if root else path.name).encode())
            update_from_file(digest, path)
    return digest.hexdigest()


def previous_training(path: Path, fingerprint: str) -> tuple[ResumeState | None, str | None]:
    """The state to resume from, or None and why not (None, None: there is none)."""
    if not path.exists():
        return None, None
    try:
        state = ResumeState.load(path)
    except SegpipeError as exc:
        return None, f"{exc}; training from the start"
    if state.fingerprint != fingerprint:
        return None, (f"{path} holds an interrupted training (epoch {state.epoch}) with other params, data or code; "
                      "training from the start")
    return state, None


def discard(folder: Path) -> None:
    """Remove the resume folder: the training it belongs to is finished, or cannot be resumed."""
    shutil.rmtree(folder, ignore_errors=True)


def random_states(generator: torch.Generator) -> dict:
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
