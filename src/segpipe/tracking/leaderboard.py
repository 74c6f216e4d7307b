"""An experiment's runs ranked by a metric: one leaderboard for `segpipe compare`
(a table of any params and metrics, best first) and for the report (the latest
runs, the best and the current one, with what each set differently)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segpipe.errors import SegpipeError, redact

RANKED_BY = "test_miou"
DEFAULT_PARAMS = ["data.dataset", "model.name", "model.pooling", "loss.name", "train.epochs", "train.lr"]
DEFAULT_METRICS = ["test_miou", "test_f1", "test_pixel_accuracy", "best_val_miou"]
LINEAGE = ["dvc_exp_name", "git_commit"]


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    started_ms: int
    git_commit: str
    metrics: dict[str, float]
    params: dict[str, str]          # as MLflow keeps them: strings
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, run) -> "RunSummary":
        return cls(run.info.run_id, run.info.run_name or run.info.run_id[:8], int(run.info.start_time or 0),
                   run.data.tags.get("git_commit", "unknown"), dict(run.data.metrics), dict(run.data.params),
                   dict(run.data.tags))

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_ms / 1000))


def experiment_runs(client, experiment: str, max_runs: int | None = 500) -> list[RunSummary]:
    """The experiment's runs, newest first, from an MlflowClient (every run when max_runs is None)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=min(max_runs or 1000, 1000), page_token=token)
        runs += [RunSummary.from_mlflow(run) for run in page]
        token = page.token
        if not token or (max_runs is not None and len(runs) >= max_runs):
            return runs[:max_runs] if max_runs is not None else runs


def ranked(runs: list[RunSummary], metric: str = RANKED_BY, ascending: bool = False) -> list[RunSummary]:
    """The runs that have `metric`, best first (ties: the newer first), then the runs without it."""
    scored = [r for r in runs if metric in r.metrics]
    order = sorted(scored, key=lambda r: (r.metrics[metric] if ascending else -r.metrics[metric], -r.started_ms))
    return order + [r for r in runs if metric not in r.metrics]


# --- segpipe compare ----------------------------------------------------------------


def leaderboard(runs: list[RunSummary], params: list[str], metrics: list[str], sort_by: str, ascending: bool = False):
    """One row per run: run id, lineage tags, the chosen params and metrics, best first."""
    import pandas as pd

    if sort_by not in metrics:
        metrics = [*metrics, sort_by]
    rows = []
    for run in ranked(runs, sort_by, ascending):
        row = {"run_id": run.run_id}
        row["dvc_exp_name"] = run.tags.get("dvc_exp_name")
        row["git_commit"] = run.git_commit[:10]
        row |= {name: run.params.get(name) for name in params}
        row |= {name: run.metrics.get(name) for name in metrics}
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", *LINEAGE, *params, *metrics])


def against_baseline(table, baseline_id: str, params: list[str], metrics: list[str]):
    """Add each metric's difference from the baseline run and the params that differ from it."""
    match = table[table["run_id"] == baseline_id]
    if match.empty:
        raise SegpipeError(f"--baseline {baseline_id}: no such run in this experiment; pick a run_id from the table")
    base = match.iloc[0]
    result = table.copy()
    for name in metrics:
        if name in result:
            result[f"{name} vs baseline"] = result[name] - base[name]
    result["params changed"] = [
        ", ".join(f"{p}: {base[p]} -> {row[p]}" for p in params if row[p] != base[p]) for _, row in table.iterrows()
    ]
    return result


def seed_summary(runs: list[RunSummary], params: list[str], metrics: list[str], sort_by: str):
    """One row per group of runs that differ only in train.seed: its seeds and each metric's mean ± std over them,
    best mean first."""
    import numpy as np
    import pandas as pd

    from segpipe.tracking.paired_runs import SEED_PARAM, seed_groups

    rows = []
    for group in seed_groups(runs):
        row = {"runs": len(group), "seeds": ",".join(sorted((r.params.get(SEED_PARAM, "?") for r in group), key=str)),
               "run_ids": ",".join(r.run_id[:8] for r in group)}
        row |= {name: group[0].params.get(name) for name in params if name != SEED_PARAM}
        for name in metrics:
            values = [r.metrics[name] for r in group if name in r.metrics]
            row[name] = (f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1
                         else f"{values[0]:.4f}" if values else None)
        row["_sort"] = np.mean([r.metrics[sort_by] for r in group if sort_by in r.metrics] or [np.nan])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("_sort", ascending=False, na_position="last").drop(columns="_sort")


def search_runs(client, experiment: str) -> list[RunSummary]:
    """Every run of the experiment in the client's store."""
    if client.get_experiment_by_name(experiment) is None:
        raise SegpipeError(f"no MLflow experiment named {experiment!r} at {redact(client.tracking_uri)}; run the "
                           "pipeline first or pass --experiment")
    return experiment_runs(client, experiment, max_runs=None)


def write_table(table, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix.lower() in (".md", ".markdown"):
        path.write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    else:
        raise SegpipeError(f"--out {path}: write .csv or .md")


# --- the report's history -----------------------------------------------------------


@dataclass(frozen=True)
class ComparedRun:
    run: RunSummary
    is_current: bool
    is_best: bool
    differences: list[str] = field(default_factory=list)   # "key=value" where the run's params differ from this one's


def param_differences(params: dict[str, str], current: dict[str, Any], limit: int = 4) -> list[str]:
    """The params a run set differently from the current run (keys both recorded)."""
    found = [f"{key}={value}" for key, value in params.items() if key in current and str(current[key]) != value]
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


def compare_runs(runs: list[RunSummary], current_id: str | None, current_params: dict[str, Any],
                 recent: int = 10) -> list[ComparedRun]:
    """The `recent` latest runs that have a test mIoU, and the best and the current
    run when they are older; newest first. The best is the leaderboard's first."""
    scored = sorted((r for r in runs if RANKED_BY in r.metrics), key=lambda r: r.started_ms, reverse=True)
    if not scored:
        return []
    best = ranked(scored)[0]
    shown = scored[:recent] + [r for r in scored[recent:] if r.run_id in (best.run_id, current_id)]
    return [ComparedRun(r, r.run_id == current_id, r.run_id == best.run_id,
                        [] if r.run_id == current_id else param_differences(r.params, current_params))
            for r in shown]
