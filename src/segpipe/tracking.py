"""MLflow tracking: one run per `dvc repro`, opened by train and continued by
evaluate and report through the run id the checkpoint carries.

Every run records its lineage (git commit and dirtiness, the DVC experiment and
baseline, the dataset's DVC hash) so any run leads back to the code, params and
data that made it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import yaml

from segpipe.errors import SegpipeError

LOCAL_SCHEMES = ("sqlite:", "file:")


def store_root() -> Path:
    """The project folder the default store lives in. DVC runs queued experiments in a
    temporary copy under .dvc/tmp/exps and deletes it afterwards, so a store beside
    the working directory would lose them; DVC_ROOT names the real project."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store mlflow.db at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


def _quiet_mlflow():
    # The pipeline runs offline: no usage telemetry unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # slow to import: only in the stages that track

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


def prepare_store(uri: str) -> None:
    """Make the store usable before any run starts.

    A new SQLite store is created and migrated under a file lock: MLflow migrates
    without one, and several processes opening a store that does not exist yet
    (parallel queued experiments) can corrupt it for good. A tracking server must
    answer its health check."""
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(f"{database}.lock", timeout=300):
                _quiet_mlflow().MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # SQLAlchemy and MLflow raise many types for a broken file
            raise SegpipeError(f"cannot open the MLflow store {uri}: {exc}; move the broken database aside "
                               "or point MLFLOW_TRACKING_URI at another store") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SegpipeError(f"the MLflow tracking server at {uri} is unreachable ({reason})") from None


def _connect(uri: str):
    """MLflow, pointed at a store that is ready for use (see prepare_store)."""
    prepare_store(uri)
    mlflow = _quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    return mlflow


def _defined(metrics: dict[str, float | None]) -> dict[str, float]:
    """Metrics that have a value: a class absent from a split has none (null in metrics/)."""
    return {k: v for k, v in metrics.items() if v is not None}


def _git(args: list[str], cwd: Path) -> str | None:
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


def lineage_tags(workdir: Path) -> dict[str, str]:
    """Tags that lead from a run back to its code, experiment and data."""
    tags = {"git_commit": _git(["rev-parse", "HEAD"], workdir) or "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], workdir)
    tags["git_dirty"] = "unknown" if status is None else str(bool(status)).lower()
    for variable, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    hashes = dvc_lock_hashes(workdir)
    for path, tag in (("data/raw", "data_raw_dvc_md5"), ("data/processed", "data_processed_dvc_md5")):
        if path in hashes:
            tags[tag] = hashes[path]
    return tags


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class TrainingRun:
    """The MLflow run a training stage records into, or a stand-in that records
    nothing when the store is unreachable and tracking is not required (the
    metrics/ files still hold every result)."""

    def __init__(self, experiment: str, params: dict[str, Any], tags: dict[str, str], required: bool):
        self.run_id, self.mlflow = None, None
        try:
            mlflow = _connect(tracking_uri())
        except SegpipeError as exc:
            if required:
                raise SegpipeError(f"{exc}; start it, fix MLFLOW_TRACKING_URI, or set mlflow.required: false "
                                   "in params.yaml to train without tracking") from None
            _warn(f"{exc}; training without MLflow tracking (mlflow.required is false), results stay in metrics/")
            return
        experiment_id = _experiment_id(mlflow, experiment)
        self.run_id = mlflow.start_run(experiment_id=experiment_id, tags=tags).info.run_id
        mlflow.log_params(params)
        self.mlflow = mlflow

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        if self.active:
            self.mlflow.log_metrics(_defined(metrics), step=step)

    def log_dataset(self, name: str, path: Path, digest: str | None) -> None:
        """The training data as an MLflow dataset input, its digest the DVC hash."""
        if not self.active:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
        dataset = MetaDataset(source, name=name, digest=digest.removesuffix(".dir") if digest else None)
        self.mlflow.log_input(dataset, context="training")

    def log_model(self, model, example, registered_name: str | None) -> None:
        """Log the model as a torch.export (pt2) program: it loads without segpipe
        installed and without unpickling code. Export needs a real input, so the
        example is a batch at the training size, and the signature comes from it."""
        if not self.active:
            return
        import torch
        from mlflow.models import infer_signature

        model = model.to("cpu").eval()
        with torch.inference_mode():
            output = model(torch.from_numpy(example)).numpy()
        self.mlflow.pytorch.log_model(
            model, name="model", input_example=example, signature=infer_signature(example, output),
            serialization_format="pt2", registered_model_name=registered_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self.mlflow.end_run(status=status)

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")


def _experiment_id(mlflow, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps artifacts beside it, wherever the stages happen to run from.
    local = mlflow.get_tracking_uri().startswith(LOCAL_SCHEMES)
    return mlflow.create_experiment(name, artifact_location=(store_root() / "mlruns").as_uri() if local else None)


def log_to_run(
    run_id: str | None, required: bool, metrics: dict[str, float | None] | None = None,
    artifacts: dict[str, list[Path]] | None = None,
) -> None:
    """Add results to a finished run: evaluate's test metrics, report's files
    (`artifacts` maps a folder in the run to the files that go there)."""
    if run_id is None:
        _warn("this model was trained without MLflow tracking; results are in metrics/ and reports/ only")
        return
    uri = tracking_uri()
    try:
        mlflow = _connect(uri)
        with mlflow.start_run(run_id=run_id):
            if metrics:
                mlflow.log_metrics(_defined(metrics))
            for folder, paths in (artifacts or {}).items():
                for path in paths:
                    mlflow.log_artifact(str(path), artifact_path=folder)
    except Exception as exc:  # an unreachable server or a store that lost the run
        if required:
            raise SegpipeError(f"cannot record into MLflow run {run_id} at {uri}: {exc}; the files in metrics/ are "
                               "written; fix the store, or set mlflow.required: false") from None
        _warn(f"could not record into MLflow run {run_id} at {uri}: {exc}; results stay in metrics/")
