"""The MLflow store a stage records into, and the policy for its failures.

With mlflow.required: false, every failure of the store (unreachable, read-only,
corrupt) is a warning and results stay in metrics/; with true it stops the stage
with a message, and a run that was started is marked FAILED, never left RUNNING.

A server's login may be in the URI (http://user:password@host:port, as MLflow
accepts it) or in MLFLOW_TRACKING_USERNAME/PASSWORD (or MLFLOW_TRACKING_TOKEN).
MLflow is given the URI without it, so no password reaches a message, a log or a
recorded value; every message quotes the store through errors.redact.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from segpipe.errors import SegpipeError, redact, warn


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


def split_login(uri: str) -> tuple[str, str | None, str | None]:
    """A server URI without its user-info, and the user and password it held (decoded)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), urllib.parse.unquote(user), urllib.parse.unquote(password)


def server_uri(uri: str) -> str:
    """The URI to give MLflow: a server's without its login, which goes to MLflow as
    MLFLOW_TRACKING_USERNAME/PASSWORD instead (MLflow reads them on every request). A login
    in the URI wins over the variables, as in MLflow itself, whose HTTP library takes a URL's
    login over the one MLflow puts in the header."""
    bare, user, password = split_login(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password or ""
    return bare


def login() -> tuple[str | None, dict[str, str]]:
    """Who MLflow logs in as, and the Authorization header it sends with each request: basic
    with a user and a password (the variables, else ~/.mlflow/credentials), else a bearer token."""
    from mlflow.utils.credentials import read_mlflow_creds

    user, password = read_mlflow_creds()
    if user and password:
        return user, {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return None, {"Authorization": f"Bearer {token}"}
    return None, {}


def _check_server(uri: str) -> None:
    """The server answers its health check, and takes the login (if it asks for one: MLflow's
    basic-auth app leaves /health open, so a listing of one experiment is asked for too)."""
    user, header = login()
    path = "/health"
    try:
        for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
            request = urllib.request.Request(f"{uri.rstrip('/')}{path}", headers=header)
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            who = (f"refused the login of user {user!r} (401: wrong user or password)" if user else
                   "refused the token (401)" if header else "asks who is calling (401) and no login was given")
            raise SegpipeError(f"the MLflow tracking server at {uri} {who}; set MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD to your login on it (docs/TEAM.md)") from None
        if path == "/health":
            raise SegpipeError(f"the MLflow tracking server at {uri} is unreachable ({exc})") from None
        # Any other answer to the listing (an older server, a proxy) is for MLflow's own calls to report.
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SegpipeError(f"the MLflow tracking server at {uri} is unreachable ({reason})") from None


def prepare_store(uri: str) -> str:
    """Make the store usable before any run starts; returns the URI to give MLflow.

    A new SQLite store is created and migrated under a file lock: MLflow migrates
    without one, and several processes opening a store that does not exist yet
    (parallel queued experiments) can corrupt it for good. A tracking server must
    answer its health check and take the login (see server_uri)."""
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
        uri = server_uri(uri)
        _quiet_mlflow()
        _check_server(uri)
    return uri


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
    uri = prepare_store(uri)
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
    text = redact(str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _refusal(exc: BaseException) -> str:
    """What a server that checks who is calling meant by refusing a call."""
    code = getattr(exc, "error_code", None)
    if code == "PERMISSION_DENIED":
        return (f" (user {login()[0]!r} may not do this on the server: ask its admin for EDIT on the experiment, "
                "docs/TEAM.md)")
    if code == "UNAUTHENTICATED":
        return " (the server refused the login: check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
    return ""


def _defined(metrics: dict[str, float | None]) -> dict[str, float]:
    """Metrics that have a value: a class absent from a split has none (null in metrics/)."""
    return {k: v for k, v in metrics.items() if v is not None}


class Tracking:
    """An MLflow connection that obeys mlflow.required: with true a failure of the
    store is an error that names it; with false it is one warning, after which
    nothing more is recorded (the metrics/ files still hold every result)."""

    def __init__(self, required: bool):
        # The URI as messages name it: a server's without its login.
        self.required, self.uri = required, split_login(tracking_uri())[0]
        self.mlflow, self.run_id = None, None
        self.owns_run = False  # a run this process started, to be marked FAILED if recording breaks
        try:
            self.mlflow = _connect(tracking_uri())
        except SegpipeError as exc:
            self._fail(exc, "connecting")

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    def _fail(self, exc: BaseException, doing: str) -> None:
        message = (str(exc) if isinstance(exc, SegpipeError) else
                   f"{doing} failed at {self.uri}: {_short(exc)}{_refusal(exc)}")
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
        warn(f"MLflow: {message}; going on without tracking (mlflow.required is false), results stay in metrics/")

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
        if experiment is None:
            try:
                # A local store keeps artifacts beside it (see local_artifact_location).
                return mlflow.create_experiment(name, artifact_location=local_artifact_location(self.uri),
                                                tags=EXPERIMENT_KIND)
            except mlflow.exceptions.MlflowException as exc:
                # Another first run (a parallel queued experiment, a teammate) created it since the look-up.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS" or (experiment := mlflow.get_experiment_by_name(name)) is None:
                    raise
        check_artifacts_follow_project(self.uri, experiment.name, experiment.artifact_location)
        mark_training_experiment(mlflow.MlflowClient(), experiment)
        return experiment.experiment_id


def local_artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local store keeps its artifacts: mlruns/ beside the SQLite database (the
    project's own mlflow.db by default, or the one MLFLOW_TRACKING_URI names, on its disk), wherever the stages
    happen to run from; MLflow's default for a file: store (inside it) or a server's (its own)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve().parent / "mlruns").as_uri()
    return None


# MLflow 3's UI opens an experiment on its GenAI overview (traces, tokens, "No data"). Two mechanisms of MLflow's
# own say an experiment holds model training (read from its UI bundle, mlflow/server/js, at 3.17.2): the experiment
# tag "mlflow.experimentKind" that the UI's experiment-type selector writes (what the UI goes by when its
# GenAI / Model training switch is off), and that switch itself, which a `workflowType=machine_learning` query
# parameter sets (otherwise the browser's last choice, GenAI for a new user). segpipe sets the tag on its
# experiments and links to the runs table with the parameter.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RUNS_VIEW = "workflowType=machine_learning"


def mark_training_experiment(client, experiment) -> None:
    """Tag an experiment made before segpipe set the kind (a user's own choice in the UI is left alone)."""
    from mlflow.exceptions import MlflowException

    for key, value in EXPERIMENT_KIND.items():
        if key not in experiment.tags:
            try:
                client.set_experiment_tag(experiment.experiment_id, key, value)
            except MlflowException as exc:
                # A parallel first run (or the user, in the UI) tagged it between the look-up and the insert:
                # theirs stands.
                if not lost_an_insert_race(exc):
                    raise


def again_if_another_inserted_it(call, *args, **kwargs):
    """Call an MLflow write that looks a row up and inserts it when missing (a run's dataset), and call it
    again (three tries in all) when another process inserted the same row in between: the write then
    fails on the table's key, and the next try finds the row. Parallel queued experiments and teammates'
    runs that start together meet this on a shared store."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            if attempt == 2 or not lost_an_insert_race(exc):
                raise


def lost_an_insert_race(exc: Exception) -> bool:
    """A database's unique-key error (SQLite, PostgreSQL, MySQL) as MLflow passes it on, in process or from a
    server; not its other integrity errors (a foreign key, a NOT NULL), which a second try cannot mend."""
    return re.search(r"UNIQUE constraint failed|UniqueViolation|duplicate key value violates unique constraint|"
                     r"Duplicate entry", str(exc)) is not None


def runs_table_url(base: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs table."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"


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
