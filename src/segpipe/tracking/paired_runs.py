"""The runs a paired comparison compares, found in MLflow or in git/DVC, with what each was scored on.

A run is named by its MLflow run id, its run name, or its DVC experiment's name (the
run's name and its dvc_exp_name tag); its per-image confusion matrices are the
artifact evaluate logs (metrics/per_image.npz). A DVC experiment or git revision that
this MLflow store does not know (a teammate's, pulled with `dvc exp pull`) is read
from git and the DVC cache: metrics/per_image.npz at that revision, and the processed
data's hash from its dvc.lock.
"""

from __future__ import annotations

import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from segpipe.errors import SegpipeError
from segpipe.evaluation.paired import ScoredRun
from segpipe.evaluation.per_image import PerImageResults
from segpipe.paths import PER_IMAGE, PROCESSED_DIR
from segpipe.tracking.leaderboard import RunSummary
from segpipe.tracking.lineage import git

# Where evaluate logs the per-image matrices in the run.
PER_IMAGE_ARTIFACT = f"{PER_IMAGE.parent.name}/{PER_IMAGE.name}"
DATA_HASH_TAG = "data_processed_dvc_md5"
SEED_PARAM = "train.seed"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ComparedRun:
    """One side of a comparison: the MLflow run (None for a git/DVC revision) and its test data."""

    test_data: ScoredRun
    run: RunSummary | None = None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_run(client, experiment: str, reference: str) -> RunSummary | None:
    """The MLflow run `reference` names (id, run name or DVC experiment name), newest first; None when none does."""
    if RUN_ID.match(reference):
        try:
            return RunSummary.from_mlflow(client.get_run(reference))
        except Exception:  # not in this store
            pass
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    for condition in (f"attributes.run_name = '{_quote(reference)}'", f"tags.dvc_exp_name = '{_quote(reference)}'",
                      f"tags.segpipe_results_of_name = '{_quote(reference)}'"):
        runs = client.search_runs([found.experiment_id], filter_string=condition,
                                  order_by=["attributes.start_time DESC"], max_results=50)
        # A run that was evaluated first: a training interrupted before evaluate has no results.
        runs = sorted(runs, key=lambda run: "test_miou" not in run.data.metrics)
        if runs:
            return RunSummary.from_mlflow(runs[0])
    return None


def run_per_image(client, run: RunSummary) -> PerImageResults:
    """The per-image matrices evaluate logged into the run."""
    with tempfile.TemporaryDirectory() as folder:
        listed = None
        try:
            listed = {item.path for item in client.list_artifacts(run.run_id, str(Path(PER_IMAGE_ARTIFACT).parent))}
            path = client.download_artifacts(run.run_id, PER_IMAGE_ARTIFACT, folder)
        except Exception as exc:
            if listed is not None and PER_IMAGE_ARTIFACT not in listed:
                raise SegpipeError(f"run {run.name} ({run.run_id}) has no {PER_IMAGE_ARTIFACT} artifact: it was "
                                   "evaluated before segpipe logged per-image results, or evaluate never ran for it; "
                                   "re-run its evaluate stage (dvc repro -f evaluate) to log them") from None
            # The store or its artifact storage failed (a server gone, a login refused): say that, not "re-run".
            raise SegpipeError(f"cannot read {PER_IMAGE_ARTIFACT} of run {run.name} ({run.run_id}): "
                               f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None
        return PerImageResults.load(path)


def run_test_data(client, run: RunSummary) -> ComparedRun:
    return ComparedRun(ScoredRun(run.name, run.tags.get(DATA_HASH_TAG), run_per_image(client, run)), run)


def experiment_revision(reference: str, workdir: Path) -> str | None:
    """The commit of a DVC experiment by name (refs/exps/.../<name>), or of a git revision."""
    refs = git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], workdir) or ""
    for line in refs.splitlines():
        commit, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == reference:
            return commit
    return git(["rev-parse", "--verify", "--quiet", f"{reference}^{{commit}}"], workdir) or None


def revision_test_data(reference: str, workdir: Path) -> ComparedRun:
    """metrics/per_image.npz and the processed data's hash as committed at a DVC experiment or git revision."""
    commit = experiment_revision(reference, workdir)
    if commit is None:
        raise SegpipeError(f"{reference!r} is neither a run in this MLflow store (run id, run name or DVC experiment "
                           "name) nor a DVC experiment or git revision here; `segpipe compare` lists the runs, "
                           "`dvc exp show` the experiments (`dvc exp pull origin NAME` fetches a teammate's)")
    import dvc.api

    try:
        with dvc.api.open(str(PER_IMAGE), repo=str(workdir), rev=commit, mode="rb") as handle:
            data = io.BytesIO(handle.read())
    except Exception as exc:
        raise SegpipeError(f"{PER_IMAGE} of {reference} ({commit[:8]}) is not readable here ({type(exc).__name__}): "
                           f"fetch it with `dvc pull` / `dvc exp pull origin {reference}`, or evaluate that "
                           "revision") from None
    with data:
        results = _load_npz(data, f"{PER_IMAGE} at {reference}")
    lock = yaml.safe_load(git(["show", f"{commit}:dvc.lock"], workdir) or "") or {}
    hashes = {out["path"]: out.get("md5") for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}
    return ComparedRun(ScoredRun(reference, hashes.get(str(PROCESSED_DIR)), results))


def _load_npz(handle, name: str) -> PerImageResults:
    try:
        with np.load(handle, allow_pickle=False) as data:
            return PerImageResults(data["ids"].tolist(), data["classes"].tolist(), data["matrices"])
    except (OSError, KeyError, ValueError) as exc:
        raise SegpipeError(f"{name}: cannot read the per-image results ({exc})") from None


def resolve(client, experiment: str, reference: str, workdir: Path) -> ComparedRun:
    """A run in this MLflow store first; else a DVC experiment or git revision of the repository at workdir."""
    run = find_run(client, experiment, reference) if client is not None else None
    return run_test_data(client, run) if run is not None else revision_test_data(reference, workdir)


def seed_group(client, run: RunSummary, runs: list[RunSummary]) -> list[ComparedRun]:
    """The run and every other evaluated run that differs from it only in train.seed (its params and test data
    otherwise equal), the run first, one run per seed (the newest)."""
    def key(candidate: RunSummary):
        return ({k: v for k, v in candidate.params.items() if k != SEED_PARAM}, candidate.tags.get(DATA_HASH_TAG))

    group, seeds = [run], {run.params.get(SEED_PARAM)}
    for other in sorted(runs, key=lambda r: -r.started_ms):
        if (other.run_id != run.run_id and "test_miou" in other.metrics and key(other) == key(run)
                and other.params.get(SEED_PARAM) not in seeds):
            group.append(other)
            seeds.add(other.params.get(SEED_PARAM))
    return [run_test_data(client, member) for member in group]


def seed_groups(runs: list[RunSummary]) -> list[list[RunSummary]]:
    """The evaluated runs grouped by everything but train.seed (params and test data), newest group first."""
    groups: dict[str, list[RunSummary]] = {}
    for run in sorted(runs, key=lambda r: -r.started_ms):
        if "test_miou" not in run.metrics:
            continue
        params = {k: v for k, v in run.params.items() if k != SEED_PARAM}
        key = repr((sorted(params.items()), run.tags.get(DATA_HASH_TAG)))
        groups.setdefault(key, []).append(run)
    return list(groups.values())
