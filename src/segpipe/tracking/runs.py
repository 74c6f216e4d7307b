"""MLflow tracking: one run per training, which evaluate and report continue.

Every run has its own name (the DVC experiment's, or a unique one), and records
its lineage: the git commit and whether code or params differ from it, a hash of
the params, the DVC experiment and baseline, the dataset's DVC hash. Any run
leads back to the code, params and data that made it.

The link from a model to its run lives beside the model (models/mlflow_run.json,
committed with dvc.lock), never inside the cached model file. Evaluate and report
record into the run that trained the model when the current store has it; a
teammate whose store does not gets a new run that names the original.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segpipe.atomic import read_json, write_json
from segpipe.errors import warn
from segpipe.hashing import file_sha256
from segpipe.tracking.store import (
    UPLOAD_TIMEOUT,
    Tracking,
    _defined,
    _http_setting,
    _short,
    again_if_another_inserted_it,
    check_artifacts_follow_project,
)


@dataclass(frozen=True)
class RunLink:
    """models/mlflow_run.json: which run trained the model beside it."""

    run_id: str | None
    run_name: str
    experiment: str
    model_sha256: str

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "RunLink | None":
        try:
            return cls(**read_json(path))
        except (OSError, ValueError, TypeError):
            return None


class TrainingRun(Tracking):
    """The run a training records into: a new one, or (resuming) the one it started."""

    def __init__(self, experiment: str, params: dict[str, Any], tags: dict[str, str], required: bool,
                 run_name: str, resume_run_id: str | None = None):
        super().__init__(required)
        self.experiment, self.run_name = experiment, run_name
        with self.guard("starting the run"):
            if self.active:
                self._start(experiment, params, tags, run_name, resume_run_id)

    @classmethod
    def elsewhere(cls) -> "TrainingRun":
        """What the other processes of a DDP training hold: the main process records for all."""
        run = cls.__new__(cls)
        run.required, run.uri, run.mlflow, run.run_id, run.owns_run = False, None, None, None, False
        run.experiment, run.run_name = None, None
        return run

    def _start(self, experiment: str, params: dict, tags: dict, run_name: str, resume_run_id: str | None) -> None:
        if resume_run_id is not None and self._exists(resume_run_id):
            with _system_metrics_interval():
                self.run_id = self.mlflow.start_run(run_id=resume_run_id, log_system_metrics=True).info.run_id
            self.owns_run = True
            return
        if resume_run_id is not None:
            warn(f"MLflow run {resume_run_id} of the interrupted training is not in {self.uri}; recording into a new run")
        experiment_id = self.experiment_id(experiment)
        with _system_metrics_interval():
            self.run_id = self.mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                                                log_system_metrics=True).info.run_id
        self.owns_run = True
        self.mlflow.log_params(params)

    def _exists(self, run_id: str) -> bool:
        try:
            self.mlflow.MlflowClient().get_run(run_id)
            return True
        except Exception:
            return False

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        with self.guard("logging metrics"):
            if self.active:
                self.mlflow.log_metrics(_defined(metrics), step=step)

    def log_images(self, images: dict, step: int, prefix: str = "val_predictions") -> None:
        """(H, W, 3) uint8 images under `prefix/<name>` at this step: the run page's image slider."""
        with self.guard("logging images"):
            if self.active:
                for name, image in images.items():
                    self.mlflow.log_image(image, key=f"{prefix}/{name}", step=step)

    def logged_steps(self, metric: str) -> set[int]:
        """The steps a metric already has (a resumed run skips re-logging them)."""
        with self.guard("reading metric history"):
            if self.active:
                return {m.step for m in self.mlflow.MlflowClient().get_metric_history(self.run_id, metric)}
        return set()

    def set_tags(self, tags: dict[str, str]) -> None:
        with self.guard("setting tags"):
            if self.active:
                self.mlflow.set_tags(tags)

    def log_dataset(self, name: str, path: Path, digest: str | None) -> None:
        """The training data as an MLflow dataset input, its digest the DVC hash."""
        with self.guard("logging the dataset"):
            if not self.active:
                return
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(path.resolve()))
            dataset = MetaDataset(source, name=name, digest=digest.removesuffix(".dir") if digest else None)
            # Parallel queued experiments (or a teammate's) log the same new dataset at the same moment.
            again_if_another_inserted_it(self.mlflow.log_input, dataset, context="training")

    def log_model(self, model, example, registered_name: str | None, metadata: dict | None = None) -> None:
        """Log the model as a torch.export (pt2) program: it loads without segpipe
        installed and without unpickling code, and takes batches of any size, height
        and width (sides above the model's stride), as `segpipe predict` feeds it.
        `example` is a normalised batch at the training size; export traces it, padded
        where it is too small to generalise from (see export.export_example).
        `metadata` (export.model_metadata: classes, ignore label, working resolution,
        normalisation) is stored in the MLmodel file beside the program."""
        with self.guard("logging the model"):
            if not self.active:
                return
            import numpy as np
            import torch
            from mlflow.models import ModelSignature
            from mlflow.types import Schema, TensorSpec

            from segpipe.models.forward import export_example, feature_stride

            model = model.to("cpu").eval()
            example = export_example(model, example)
            # -1: MLflow exports these dimensions as dynamic, and serving accepts any value there.
            signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, example.shape[1], -1, -1))]),
                                       outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.num_classes, -1, -1))]))
            metadata = {**(metadata or {}), "min_input_side": feature_stride(model) + 1}
            with _http_setting("MLFLOW_HTTP_REQUEST_TIMEOUT", UPLOAD_TIMEOUT):
                self.mlflow.pytorch.log_model(
                    model, name="model", input_example=example, signature=signature, metadata=metadata,
                    serialization_format="pt2", registered_model_name=registered_name,
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                )

    def finish(self, status: str = "FINISHED") -> None:
        with self.guard("ending the run"):
            if self.active:
                self.mlflow.end_run(status=status)

    def link(self, model_path: Path) -> RunLink:
        """The link to write beside the finished model; tags the run with the model's hash."""
        digest = file_sha256(model_path)
        self.set_tags({"model_sha256": digest})
        return RunLink(self.run_id if self.active else None, self.run_name, self.experiment, digest)


# MLflow samples CPU, memory, disk, network and (with nvidia-ml-py, on an NVIDIA machine) each GPU's
# utilisation and memory on a thread of its own, and logs them as system/* metrics: the run's System
# metrics tab. A sample is a few psutil/NVML reads and one read of the run, every 5 s: nothing a
# training can feel, yet a minute of training gets a dozen points (MLflow's default, 10 s, gives a
# short run none: it logs only whole intervals).
SYSTEM_METRICS_SECONDS = 5


@contextmanager
def _system_metrics_interval():
    """MLflow reads the sampling interval from its environment variable when the run starts; a
    user's own setting of it wins, and ours is not left behind in the process."""
    name = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(SYSTEM_METRICS_SECONDS)
    try:
        yield
    finally:
        os.environ.pop(name, None)


class ResultsRun(Tracking):
    """Where evaluate and report record their results: the run that trained the
    model when this store has it, else a run that names the original."""

    def __init__(self, model_path: Path, link_path: Path, experiment: str, required: bool,
                 params: dict[str, Any], tags: dict[str, str]):
        super().__init__(required)
        link = RunLink.load(link_path)
        digest = file_sha256(model_path)
        with self.guard("finding the model's run"):
            if self.active:
                self.run_id = self._find(link, digest, experiment) or self._start(link, digest, experiment, params, tags)

    def _find(self, link: RunLink | None, digest: str, experiment: str) -> str | None:
        client = self.mlflow.MlflowClient()
        if link is not None and link.run_id and link.model_sha256 == digest:
            try:
                return client.get_run(link.run_id).info.run_id
            except Exception:  # not in this store: a teammate's run, or another store
                pass
        found = self.mlflow.get_experiment_by_name(experiment)
        if found is None:
            return None
        check_artifacts_follow_project(self.uri, found.name, found.artifact_location)
        runs = client.search_runs([found.experiment_id], filter_string=f"tags.model_sha256 = '{digest}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def _start(self, link: RunLink | None, digest: str, experiment: str, params: dict, tags: dict) -> str:
        original = link.run_id if link is not None and link.model_sha256 == digest else None
        name = f"{link.run_name if original else 'model-' + digest[:8]}-results-{secrets.token_hex(2)}"
        references = {"model_sha256": digest, "segpipe_results_of": original or "unknown"}
        if original:
            references["segpipe_results_of_name"] = link.run_name
            warn(f"MLflow run {original} that trained this model is not in {self.uri}; recording into a new run "
                  f"{name!r} that names it")
        from mlflow.tracking.context.registry import resolve_tags

        # The context start_run records too: the user (the server login where there is one), source and git commit.
        run = self.mlflow.MlflowClient().create_run(self.experiment_id(experiment), run_name=name,
                                                    tags=resolve_tags({**tags, **references}))
        self.mlflow.MlflowClient().log_batch(run.info.run_id, params=[
            self.mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        self.mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def _fail(self, exc: BaseException, doing: str) -> None:
        """Results that could not all be recorded (a report's artifacts on a full disk): the run must not
        look complete, so it is marked FAILED with a tag that says what is missing, where the store still answers."""
        if self.run_id is not None and self.mlflow is not None:
            try:
                with _http_setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"):  # the store just failed: one try
                    client = self.mlflow.MlflowClient()
                    client.set_tag(self.run_id, "segpipe_incomplete", f"{doing} failed: {_short(exc)}"[:500])
                    client.set_terminated(self.run_id, "FAILED")
            except Exception:
                pass
        super()._fail(exc, doing)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows as an MLflow table (the run's Artifacts tab shows it; the UI's evaluation view compares runs' tables)."""
        with self.guard(f"logging {artifact_file} into run {self.run_id}"):
            if self.active and rows:
                self.mlflow.log_table({key: [row[key] for row in rows] for key in rows[0]}, artifact_file,
                                      run_id=self.run_id)

    def log(self, metrics: dict[str, float | None] | None = None, artifacts: dict[str, list[Path]] | None = None) -> None:
        """Add results (`artifacts` maps a folder in the run to the files that go there)."""
        with self.guard(f"recording into run {self.run_id}"):
            if not self.active:
                return
            client = self.mlflow.MlflowClient()
            if metrics:
                client.log_batch(self.run_id, metrics=[
                    self.mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in _defined(metrics).items()])
            with _http_setting("MLFLOW_HTTP_REQUEST_TIMEOUT", UPLOAD_TIMEOUT):
                for folder, paths in (artifacts or {}).items():
                    for path in paths:
                        client.log_artifact(self.run_id, str(path), artifact_path=folder)
