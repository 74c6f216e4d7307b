"""The run a report compares itself with: the model at the run's baseline commit.

Under `dvc exp run` the baseline is the experiment's baseline commit; under a plain
`dvc repro` after a change it is HEAD (tracking.params.reference_params says which).
That commit's models/mlflow_run.json names the run that trained its model and the
model's hash; the run is looked up by id, else by its model_sha256 tag, else as the
newest evaluated run tagged with that git_commit and clean code. Its per-image
matrices (the artifact evaluate logs) are paired with this run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segpipe.errors import SegpipeError
from segpipe.evaluation.paired import PairedComparison, ScoredRun, compare_paired, test_data_differences
from segpipe.evaluation.per_image import PerImageResults
from segpipe.paths import RUN_LINK
from segpipe.tracking.leaderboard import RunSummary
from segpipe.tracking.lineage import git
from segpipe.tracking.paired_runs import DATA_HASH_TAG, run_per_image
from segpipe.tracking.params import Reference


@dataclass(frozen=True)
class BaselineComparison:
    run: RunSummary | None            # the baseline's run, when found
    comparison: PairedComparison | None
    absent: str | None                # why there is no comparison


def baseline_run(client, experiment: str, reference: Reference, workdir: Path) -> RunSummary | None:
    """The evaluated run that trained the model committed at the reference commit."""
    link = {}
    text = git(["show", f"{reference.commit}:{RUN_LINK}"], workdir)
    if text:
        try:
            link = json.loads(text)
        except ValueError:
            link = {}
    if link.get("run_id"):
        try:
            run = RunSummary.from_mlflow(client.get_run(link["run_id"]))
            if "test_miou" in run.metrics:
                return run
        except Exception:  # a teammate's run, not in this store
            pass
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    conditions = [f"tags.model_sha256 = '{link['model_sha256']}'"] if link.get("model_sha256") else []
    conditions.append(f"tags.git_commit = '{reference.commit}' and tags.git_dirty = 'false'")
    for condition in conditions:
        runs = client.search_runs([found.experiment_id], filter_string=condition, order_by=["attributes.start_time DESC"],
                                  max_results=50)
        evaluated = [r for r in runs if "test_miou" in r.data.metrics]
        if evaluated:
            return RunSummary.from_mlflow(evaluated[0])
    return None


def compare_with_baseline(client, experiment: str, reference: Reference | None, current: PerImageResults,
                          current_tags: dict[str, str], current_run_id: str | None, samples: int,
                          workdir: Path) -> BaselineComparison:
    """This run's paired comparison with its baseline, or why there is none."""
    if reference is None:
        return BaselineComparison(None, None, "there is no baseline commit (not a git repository, or nothing committed "
                                              "yet)")
    if client is None:
        return BaselineComparison(None, None, "MLflow tracking is off or unavailable, and the baseline's results live "
                                              "in MLflow")
    if samples <= 0:
        return BaselineComparison(None, None, "report.bootstrap_samples is 0, so no intervals are computed")
    run = baseline_run(client, experiment, reference, workdir)
    if run is None:
        return BaselineComparison(None, None, f"no evaluated run of the model at {reference.what} (commit "
                                              f"{reference.short}) in experiment {experiment!r}: it was never run "
                                              "against this MLflow store (first run, or another store)")
    if run.run_id == current_run_id:
        return BaselineComparison(run, None, f"this run is itself the model at {reference.what} (commit "
                                             f"{reference.short}, with no change to code or params), so there is no "
                                             "other model to compare it with")
    try:
        baseline_results = run_per_image(client, run)
    except SegpipeError as exc:
        return BaselineComparison(run, None, str(exc))
    mine = ScoredRun("this run", current_tags.get(DATA_HASH_TAG), current)
    theirs = ScoredRun(f"the baseline ({run.name})", run.tags.get(DATA_HASH_TAG), baseline_results)
    differences = test_data_differences(theirs, mine)
    if differences:
        return BaselineComparison(run, None, "the baseline was scored on other test data: " + "; ".join(differences))
    return BaselineComparison(run, compare_paired(baseline_results, current, samples), None)
