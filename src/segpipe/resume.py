"""Resuming an interrupted training where it stopped.

The state of the last completed epoch (model, optimizer, schedule, scaler, random
states, history, best model so far, MLflow run) is written to a file DVC does not
delete. The next run continues from it only when its inputs are the same ones:
the fingerprint covers the training params, the processed data and the code, so
a changed learning rate or dataset starts over instead of mixing two trainings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

import segpipe
from segpipe.checkpoint import ResumeState
from segpipe.config import Params
from segpipe.errors import SegpipeError

# The params sections a training depends on (as dvc.yaml lists them for train).
TRAINING_SECTIONS = ("model", "loss", "augment", "train")


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)


def training_fingerprint(params: Params, processed_dir: Path, stage_file: Path) -> str:
    """Of everything that decides a training's result: params, data and code."""
    digest = hashlib.blake2b(digest_size=20)
    dumped = params.model_dump()
    digest.update(json.dumps({name: dumped[name] for name in TRAINING_SECTIONS}, sort_keys=True).encode())
    code = sorted(Path(segpipe.__file__).parent.rglob("*.py")) + [stage_file]
    for root, files in ((processed_dir, sorted(p for p in processed_dir.rglob("*") if p.is_file())), (None, code)):
        for path in files:
            digest.update(str(path.relative_to(root) if root else path.name).encode())
            _hash_file(digest, path)
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
