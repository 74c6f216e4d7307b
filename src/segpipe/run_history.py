"""Earlier runs of the same MLflow experiment, for the report: how this run compares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

RANKED_BY = "test_miou"


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    name: str
    started_ms: int
    git_commit: str
    metrics: dict[str, float]
    params: dict[str, str]          # as MLflow keeps them: strings

    @classmethod
    def from_mlflow(cls, run) -> "RunSummary":
        return cls(run.info.run_id, run.info.run_name or run.info.run_id[:8], int(run.info.start_time or 0),
                   run.data.tags.get("git_commit", "unknown"), dict(run.data.metrics), dict(run.data.params))

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_ms / 1000))


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
    run when they are older; newest first. The best is the highest test mIoU."""
    scored = sorted((r for r in runs if RANKED_BY in r.metrics), key=lambda r: r.started_ms, reverse=True)
    if not scored:
        return []
    best = max(scored, key=lambda r: (r.metrics[RANKED_BY], r.started_ms))
    shown = scored[:recent] + [r for r in scored[recent:] if r.run_id in (best.run_id, current_id)]
    return [ComparedRun(r, r.run_id == current_id, r.run_id == best.run_id,
                        [] if r.run_id == current_id else param_differences(r.params, current_params))
            for r in shown]


def experiment_runs(client, experiment: str, max_runs: int = 500) -> list[RunSummary]:
    """The experiment's runs, newest first, from an MlflowClient."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=max_runs)
    return [RunSummary.from_mlflow(run) for run in runs]
