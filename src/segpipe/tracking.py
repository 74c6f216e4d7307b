"""MLflow tracking: one run per `dvc repro`, opened by train and continued by
evaluate and report through the run id the checkpoint carries."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from segpipe.errors import SegpipeError


def tracking_uri(project_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store mlflow.db at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_root / 'mlflow.db').resolve()}"


def git_commit(project_root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mlflow(project_root: Path):
    # MLflow is slow to import and chatty; load it only in the stages that track.
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(project_root))
    return mlflow


def _experiment_id(mlflow, name: str, project_root: Path) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    # A local store keeps artifacts beside it, wherever the stages happen to run from.
    location = (project_root / "mlruns").resolve().as_uri() if uri.startswith(("sqlite:", "file:")) else None
    return mlflow.create_experiment(name, artifact_location=location)


class TrainingRun:
    """The MLflow run a training stage records into."""

    def __init__(self, project_root: Path, experiment: str, params: dict[str, Any], tags: dict[str, str]):
        self.mlflow = _mlflow(project_root)
        try:
            experiment_id = _experiment_id(self.mlflow, experiment, project_root)
            self.run = self.mlflow.start_run(experiment_id=experiment_id, tags=tags)
        except Exception as exc:  # MLflow raises many types for an unreachable or broken store
            raise SegpipeError(
                f"cannot open the MLflow store at {self.mlflow.get_tracking_uri()}: {exc}; "
                "check MLFLOW_TRACKING_URI or remove a broken mlflow.db"
            ) from None
        self.mlflow.log_params(params)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=step)

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")


def log_to_run(
    project_root: Path, run_id: str, metrics: dict[str, float] | None = None,
    artifacts: dict[str, list[Path]] | None = None,
) -> None:
    """Add results to a finished run: evaluate's test metrics, report's files
    (`artifacts` maps a folder in the run to the files that go there)."""
    mlflow = _mlflow(project_root)
    with mlflow.start_run(run_id=run_id):
        if metrics:
            mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        for folder, paths in (artifacts or {}).items():
            for path in paths:
                mlflow.log_artifact(str(path), artifact_path=folder)
