"""Comparison 5: `dvc repro` when everything is cached, next to DVC's own floor.

The project is copied into a temporary git repository (as tests/pipeline_project.py
does), run once, and then `dvc repro` is timed while nothing is left to do. The
floor is a pipeline of as many stages, chained the same way, that each `touch`
a file: what DVC itself costs to find that nothing changed. Commands run as on a
user's machine: no MLFLOW_*/DVC_* settings from outside, and Python writes
bytecode (this machine sets PYTHONDONTWRITEBYTECODE; users' machines do not)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.project import REPO_ROOT
from benchmarks.timing import Timings, interleaved

PROJECT_FILES = ("dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml")
PROJECT_FOLDERS = ("stages", "src")


def user_env() -> dict:
    """The environment of a user's shell (mirrors tests/pipeline_project.user_env)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env | {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}  # offline, as `make` runs it


def _run(command: list[str], cwd: Path, timeout: float = 1800) -> float:
    """Seconds the command took; an error names the command and shows its output."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {cwd} ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return seconds


def _dvc(*args: str, cwd: Path) -> float:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _init_repository(root: Path) -> None:
    _run(["git", "init", "-q"], root)
    _dvc("init", "-q", cwd=root)
    _dvc("config", "core.analytics", "false", cwd=root)
    _dvc("config", "core.check_update", "false", cwd=root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "benchmark"], root)


def stage_count() -> int:
    return len(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def create_project_copy(root: Path, params: dict) -> Path:
    """This checkout's pipeline (code, dvc.yaml) with the given params, in a fresh repository."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy(REPO_ROOT / name, root / name)
    for name in PROJECT_FOLDERS:
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _init_repository(root)
    return root


def create_touch_pipeline(root: Path, stages: int) -> Path:
    """The floor: `stages` stages chained one after another, each touching one file."""
    root.mkdir(parents=True)
    pipeline = {}
    for i in range(1, stages + 1):
        stage = {"cmd": f"touch out{i}", "outs": [f"out{i}"]}
        if i > 1:
            stage["deps"] = [f"out{i - 1}"]
        pipeline[f"stage{i}"] = stage
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": pipeline}, sort_keys=False))
    _init_repository(root)
    return root


def benchmark_params(num_images: int | None, epochs: int) -> dict:
    """The project's params.yaml, trained for `epochs` (the first run only has to finish)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    if num_images is not None:
        params["data"]["shapes"]["num_images"] = num_images
    params["train"]["epochs"] = epochs
    return params


@dataclass
class DvcResult:
    stages: int
    first_run_seconds: float  # the pipeline from scratch (context only: its cost is the stages' work)
    pipeline: Timings         # cached `dvc repro` of the project
    floor: Timings            # cached `dvc repro` of the touch pipeline

    @property
    def ratio(self) -> float:
        return self.pipeline.best / self.floor.best


def measure_dvc(rounds: int, num_images: int | None = None, epochs: int = 1, workdir: Path | None = None,
                max_rounds: int | None = None) -> DvcResult:
    stages = stage_count()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        project = create_project_copy(Path(tmp) / "project", benchmark_params(num_images, epochs))
        floor = create_touch_pipeline(Path(tmp) / "floor", stages)
        first = _dvc("repro", cwd=project)  # then everything is cached: the timed runs have nothing to do
        variants = {"pipeline": lambda: _dvc("repro", cwd=project), "floor": lambda: _dvc("repro", cwd=floor)}
        timings = interleaved(variants, rounds, warmup=1, max_rounds=max_rounds)
        return DvcResult(stages, first, timings["pipeline"], timings["floor"])
