"""Which params a run records, and what changed against the params it started from.

A run records the settings it uses: the sections of data.* that belong to
other datasets (data.folder.* on a shapes run) do nothing and would bury the
ones that matter. "What changed" compares those settings with params.yaml at the
commit the run started from: the DVC experiment's baseline under `dvc exp run`,
else the last commit.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segpipe.config import PARAMS_FILE, SegpipeConfigError, flatten, read_params_file
from segpipe.tracking.lineage import git

MISSING = "(not set)"


def loggable_params(params: BaseModel | dict) -> dict[str, Any]:
    """Flattened params, less the settings of datasets the run does not use: every
    section under data (data.<name>.*) except the one data.dataset names."""
    flat = flatten(params)
    dataset = flat.get("data.dataset")
    return {key: value for key, value in flat.items()
            if not (key.startswith("data.") and key.count(".") >= 2 and key.split(".")[1] != dataset)}


@dataclass(frozen=True)
class Reference:
    """params.yaml at the commit a run is compared with."""

    commit: str        # full hash
    what: str          # "the last commit" or "the DVC experiment's baseline"
    params: dict       # flattened, as loggable_params gives them

    @property
    def short(self) -> str:
        return self.commit[:8]


@dataclass(frozen=True)
class ParamChange:
    key: str
    before: Any        # MISSING when the reference has no such key
    after: Any



def reference_params(workdir: Path) -> Reference | None:
    """params.yaml at the DVC experiment's baseline (DVC_EXP_BASELINE_REV, set
    under `dvc exp run`) or at HEAD; None outside git, before the first commit,
    or when that commit has no readable params.yaml."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    rev, what = (baseline, "the DVC experiment's baseline") if baseline else ("HEAD", "the last commit")
    commit = git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], workdir)
    text = git(["show", f"{rev}:{PARAMS_FILE}"], workdir) if commit else None
    if text is None:
        return None
    # Read through config's own YAML reader (YAML 1.2 floats, as DVC reads them).
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / PARAMS_FILE
        path.write_text(text)
        try:
            raw, _ = read_params_file(path)
        except SegpipeConfigError:
            return None
    if not isinstance(raw, dict):
        return None
    return Reference(commit.strip(), what, loggable_params(raw))


def changed_params(current: dict[str, Any], reference: dict[str, Any]) -> list[ParamChange]:
    """The params of `current` (as loggable_params gives them) whose value differs
    from `reference`, in current's order. Keys only the reference has are left out:
    they belong to settings this run does not use."""
    return [ParamChange(key, reference.get(key, MISSING), value)
            for key, value in current.items() if reference.get(key, MISSING) != value]


def describe_changes(changes: list[ParamChange], reference: Reference | None) -> str:
    """A short Markdown note: what this run changed against its reference commit
    (the run's description in MLflow, and a section of the report)."""
    if reference is None:
        return "No committed params.yaml to compare with (not a git repository, or nothing committed yet)."
    if not changes:
        return f"Same params as {reference.what} (commit {reference.short})."
    lines = [f"Params changed against {reference.what} (commit {reference.short}):", ""]
    lines += [f"- `{c.key}`: {c.before} → {c.after}" for c in changes]
    return "\n".join(lines)


def what_changed(params: BaseModel | dict, workdir: Path) -> str:
    """describe_changes for these params against the commit the run started from."""
    reference = reference_params(workdir)
    changes = changed_params(loggable_params(params), reference.params) if reference else []
    return describe_changes(changes, reference)
