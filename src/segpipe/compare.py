"""`segpipe compare`: a leaderboard of an MLflow experiment's runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from segpipe.errors import SegpipeError

DEFAULT_PARAMS = ["data.dataset", "model.name", "model.pooling", "loss.name", "train.epochs", "train.lr"]
DEFAULT_METRICS = ["test_miou", "test_f1", "test_pixel_accuracy", "best_val_miou"]
LINEAGE = ["dvc_exp_name", "git_commit"]


def leaderboard(runs: pd.DataFrame, params: list[str], metrics: list[str], sort_by: str, ascending: bool = False) -> pd.DataFrame:
    """One row per run: run id, lineage tags, the chosen params and metrics, best first."""
    if runs.empty:
        return pd.DataFrame(columns=["run_id", *LINEAGE, *params, *metrics])
    if sort_by not in metrics:
        metrics = [*metrics, sort_by]
    table = pd.DataFrame({"run_id": runs["run_id"]})
    for tag in LINEAGE:
        values = runs.get(f"tags.{tag}")
        table[tag] = values.str[:10] if tag == "git_commit" and values is not None else values
    for name in params:
        table[name] = runs.get(f"params.{name}")
    for name in metrics:
        table[name] = runs.get(f"metrics.{name}")
    return table.sort_values(sort_by, ascending=ascending, na_position="last").reset_index(drop=True)


def against_baseline(table: pd.DataFrame, baseline_id: str, params: list[str], metrics: list[str]) -> pd.DataFrame:
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


def search_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise SegpipeError(f"no MLflow experiment named {experiment!r} at {tracking_uri}; run the pipeline first "
                           "or pass --experiment")
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix.lower() in (".md", ".markdown"):
        path.write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
    else:
        raise SegpipeError(f"--out {path}: write .csv or .md")
