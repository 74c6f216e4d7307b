"""MLflow tracking: one run per training, which evaluate and report continue.

Every run has its own name (the DVC experiment's, or a unique one), and records
its lineage: the git commit and whether code or params differ from it, a hash of
the params, the DVC experiment and baseline, the dataset's DVC hash. Any run
leads back to the code, params and data that made it.

The link from a model to its run lives beside the model (models/mlflow_run.json,
committed with dvc.lock), never inside the cached model file. Evaluate and report
record into the run that trained the model when the current store has it; a
teammate whose store does not gets a new run that names the original.

With mlflow.required: false, every failure of the store (unreachable, read-only,
corrupt) is a warning and results stay in metrics/; with true it stops the stage
with a message, and a run that was started is marked FAILED, never left RUNNING.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from segpipe.atomic import read_json, write_json
from segpipe.errors import SegpipeError

LOCAL_SCHEMES = ("sqlite:", "file:")
# What a stage reads besides its data: a change here means the run's code or params differ from its commit.
INPUT_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")


def store_root() -> Path:
    """The project folder the default store lives in. DVC runs queued experiments in a
    temporary copy under .dvc/tmp/exps and deletes it afterwards, so a store beside
    the working directory would lose them; DVC_ROOT names the real project."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the SQLite store mlflow.db at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


# A tracking server that went away must not hold a training for minutes: by default MLflow
# retries a request 7 times over about 4 minutes and waits 120 s for each answer. These fail
# a call to a dead server in about 7 s and to a frozen one in about a minute (docs/TEAM.md);
# the user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# An upload goes through the server on to object storage before it is answered.
UPLOAD_TIMEOUT = "120"


def _quiet_mlflow():
    # The pipeline runs offline: no usage telemetry unless the user asks for it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for variable, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(variable, value)
    import mlflow  # slow to import: only in the stages that track

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # It logs a store's database errors with a traceback; segpipe reports them in one sentence.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
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
            raise SegpipeError(f"cannot open the MLflow store {uri}: {_short(exc)}; move the broken database aside "
                               "or point MLFLOW_TRACKING_URI at another store") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SegpipeError(f"the MLflow tracking server at {uri} is unreachable ({reason})") from None


@contextmanager
def _http_setting(variable: str, value: str) -> Iterator[None]:
    """One MLflow HTTP setting changed for the calls inside (MLflow reads them on every
    request), unless the user chose their own."""
    before = os.environ.get(variable)
    if before != HTTP_DEFAULTS[variable]:
        yield
        return
    os.environ[variable] = value
    try:
        yield
    finally:
        os.environ[variable] = before


def _connect(uri: str):
    """MLflow, pointed at a store that is ready for use (see prepare_store)."""
    prepare_store(uri)
    mlflow = _quiet_mlflow()
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow also exports the URI to the environment, where tracking_uri() would take it
    # for the user's own setting the next time (another project, in the same process).
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def _short(exc: BaseException) -> str:
    """The root cause's first line, without SQLAlchemy's wrappers and pages of SQL."""
    while (exc.__cause__ or exc.__context__) is not None and not isinstance(exc, SegpipeError):
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


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


def lineage_tags(workdir: Path, params_sha256: str) -> dict[str, str]:
    """Tags that lead from a run back to its code, params, experiment and data.

    git_dirty says whether the code or params differ from the commit. DVC itself
    rewrites dvc.lock and the metrics files during a run, so those do not count."""
    tags = {"git_commit": _git(["rev-parse", "HEAD"], workdir) or "unknown", "params_sha256": params_sha256}
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", *INPUT_PATHS], workdir)
    tags["git_dirty"] = "unknown" if status is None else str(bool(status)).lower()
    for variable, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    hashes = dvc_lock_hashes(workdir)
    for path, tag in (("data/raw", "data_raw_dvc_md5"), ("data/processed", "data_processed_dvc_md5")):
        if path in hashes:
            tags[tag] = hashes[path]
    return tags


def new_run_name(model: str, dataset: str) -> str:
    """The DVC experiment's name under `dvc exp run`, else model, dataset, time and a
    random suffix drawn from the OS (never from `random`, which seeding would fix)."""
    return os.environ.get("DVC_EXP_NAME") or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Tracking:
    """An MLflow connection that obeys mlflow.required: with true a failure of the
    store is an error that names it; with false it is one warning, after which
    nothing more is recorded (the metrics/ files still hold every result)."""

    def __init__(self, required: bool):
        self.required, self.uri = required, tracking_uri()
        self.mlflow, self.run_id = None, None
        self.owns_run = False  # a run this process started, to be marked FAILED if recording breaks
        try:
            self.mlflow = _connect(self.uri)
        except SegpipeError as exc:
            self._fail(exc, "connecting")

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    def _fail(self, exc: BaseException, doing: str) -> None:
        message = str(exc) if isinstance(exc, SegpipeError) else f"{doing} failed at {self.uri}: {_short(exc)}"
        if self.owns_run and self.mlflow is not None:
            try:  # a run that could not be completed must not stay RUNNING (end_run forgets it first, then marks it)
                with _http_setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"):  # the store just failed: one try
                    self.mlflow.end_run("FAILED")
            except Exception:
                pass
        self.mlflow = None
        if self.required:
            raise SegpipeError(f"MLflow: {message}; fix the store or MLFLOW_TRACKING_URI, or set mlflow.required: false "
                               "in params.yaml to go on without tracking") from None
        _warn(f"MLflow: {message}; going on without tracking (mlflow.required is false), results stay in metrics/")

    @contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """Run MLflow calls (which check `active` first); a failure is handled as mlflow.required says."""
        try:
            yield
        except SegpipeError as exc:
            self._fail(exc, doing)
        except Exception as exc:  # the store's own errors: SQLAlchemy, HTTP, OS
            self._fail(exc, doing)

    def experiment_id(self, name: str) -> str:
        mlflow = self.mlflow
        experiment = mlflow.get_experiment_by_name(name)
        local = self.uri.startswith(LOCAL_SCHEMES)
        if experiment is None:
            try:
                # A local store keeps artifacts beside it, wherever the stages happen to run from.
                return mlflow.create_experiment(name, artifact_location=(store_root() / "mlruns").as_uri() if local else None)
            except mlflow.exceptions.MlflowException as exc:
                # Another first run (a parallel queued experiment, a teammate) created it since the look-up.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS" or (experiment := mlflow.get_experiment_by_name(name)) is None:
                    raise
        check_artifacts_follow_project(self.uri, experiment.name, experiment.artifact_location)
        return experiment.experiment_id


def check_artifacts_follow_project(uri: str, experiment: str, artifact_location: str) -> None:
    """A store inside this project must keep its artifacts inside it too. mlflow.db
    stores absolute artifact paths, so a copied or moved project would otherwise
    write its models and reports into the original's mlruns/."""
    if not uri.startswith("sqlite:///"):
        return
    root, database = store_root(), Path(uri.removeprefix("sqlite:///")).resolve()
    if not database.is_relative_to(root) or not artifact_location.startswith(("file:", "/")):
        return
    location = Path(urllib.parse.unquote(urllib.parse.urlparse(artifact_location).path) if artifact_location.startswith("file:")
                    else artifact_location).resolve()
    if not location.is_relative_to(root):
        raise SegpipeError(
            f"{database} belongs to another folder: its experiment {experiment!r} keeps artifacts in {location}, outside "
            f"this project ({root}), so this copy would write into the original. Start a fresh store here "
            f"(mv {database.name} {database.name}.copied; mv mlruns mlruns.copied), or set MLFLOW_TRACKING_URI to the "
            "original store to keep logging there")


# --- the run a model belongs to -----------------------------------------------------


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
            self.run_id = self.mlflow.start_run(run_id=resume_run_id).info.run_id
            self.owns_run = True
            return
        if resume_run_id is not None:
            _warn(f"MLflow run {resume_run_id} of the interrupted training is not in {self.uri}; recording into a new run")
        experiment_id = self.experiment_id(experiment)
        self.run_id = self.mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags).info.run_id
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
            self.mlflow.log_input(dataset, context="training")

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

            from segpipe.export import export_example, feature_stride

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
            _warn(f"MLflow run {original} that trained this model is not in {self.uri}; recording into a new run "
                  f"{name!r} that names it")
        run = self.mlflow.MlflowClient().create_run(self.experiment_id(experiment), run_name=name, tags={**tags, **references})
        self.mlflow.MlflowClient().log_batch(run.info.run_id, params=[
            self.mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        self.mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

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
