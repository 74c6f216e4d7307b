"""A throwaway copy of the project in a temporary git repository, for end-to-end runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

NUM_IMAGES, SIZE = 40, 32


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean['PATH']}"
    clean |= {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}  # tests never touch the internet
    result = subprocess.run(cmd, cwd=cwd, env=clean | (env or {}), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check, env)


def tiny_params() -> dict:
    """The project's params shrunk to seconds: 40 images of 32x32, one epoch, a narrow model."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["shapes"] |= {"num_images": NUM_IMAGES, "image_size": SIZE}
    params["preprocess"]["size"] = SIZE
    params["model"]["base_channels"] = 4
    params["train"] |= {"epochs": 1, "batch_size": 8}
    params["report"]["num_examples"] = 2
    return params


def create_project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("stages", "src"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    dvc("config", "core.analytics", "false", cwd=root)
    dvc("config", "core.check_update", "false", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"], root)
    return root
