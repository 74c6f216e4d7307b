"""Lineage: tags that lead from a run back to the code, params, experiment and data
that made it, and the run's name."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import yaml

# What a stage reads besides its data: a change here means the run's code or params differ from its commit.
INPUT_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")


def git(args: list[str], cwd: Path) -> str | None:
    """git's output (stripped), or None where git or the repository is missing."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dvc_lock_hashes(workdir: Path) -> dict[str, str]:
    """md5 of each stage output recorded in dvc.lock, by path."""
    lock = workdir / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", []) if "md5" in out}


def lineage_tags(workdir: Path, params_sha256: str) -> dict[str, str]:
    """Tags that lead from a run back to its code, params, experiment and data.

    git_dirty says whether the code or params differ from the commit. DVC itself
    rewrites dvc.lock and the metrics files during a run, so those do not count."""
    tags = {"git_commit": git(["rev-parse", "HEAD"], workdir) or "unknown", "params_sha256": params_sha256}
    status = git(["status", "--porcelain", "--untracked-files=no", "--", *INPUT_PATHS], workdir)
    tags["git_dirty"] = "unknown" if status is None else str(bool(status)).lower()
    for variable, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    hashes = dvc_lock_hashes(workdir)
    for path, tag in (("data/raw", "data_raw_dvc_md5"), ("data/processed", "data_processed_dvc_md5")):
        if path in hashes:
            tags[tag] = hashes[path]
    return tags


def new_run_name(model: str, dataset: str) -> str:
    """The DVC experiment's name under `dvc exp run`, else model, dataset, time and a
    random suffix drawn from the OS (never from `random`, which seeding would fix)."""
    return os.environ.get("DVC_EXP_NAME") or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
