"""Where the project is and what it is configured to do: the benchmark measures
the settings of the project's own params.yaml (imports no torch, so a child
process that only preprocesses stays as small as the preprocess stage)."""

from __future__ import annotations

from pathlib import Path

from segpipe.config import Params, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")
