"""MLflow tracking against real stores: a SQLite file, a real `mlflow server` on a
loopback port, an unreachable server, and many processes writing at once."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from segpipe.errors import SegpipeError
from segpipe.hashing import file_sha256
from segpipe.models import ModelSpec, create_model
from segpipe.tracking.leaderboard import RunSummary, against_baseline, leaderboard, write_table
from segpipe.tracking.lineage import new_run_name
from segpipe.tracking.runs import ResultsRun, RunLink, TrainingRun
from segpipe.tracking.store import prepare_store, tracking_uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = wait_for_server(process, f"http://127.0.0.1:{port}", 90, "mlflow server")
    yield url
    process.terminate()
    process.wait(timeout=30)


def wait_for_server(process: subprocess.Popen, url: str, seconds: float, what: str) -> str:
    """`url` once the server started as `process` answers its health check; the test fails if it never does."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{what} did not start")
            time.sleep(0.5)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


def test_the_default_store_is_the_projects_sqlite_file_even_in_a_dvc_temp_copy(in_tmp, monkeypatch):
    assert tracking_uri() == f"sqlite:///{in_tmp.resolve() / 'mlflow.db'}"
    queued_copy = in_tmp / ".dvc/tmp/exps/tmp1234"
    queued_copy.mkdir(parents=True)
    monkeypatch.chdir(queued_copy)
    monkeypatch.setenv("DVC_ROOT", str(in_tmp))
    assert tracking_uri() == f"sqlite:///{in_tmp.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"


def save_model(folder: Path) -> Path:
    from segpipe.data.processed import DatasetInfo
    from segpipe.models.checkpoint import ModelCheckpoint

    spec = ModelSpec("cnn", 3, "max", 4)
    info = DatasetInfo("shapes", ["a", "b", "c"], 255, {"by": "shorter_side", "to": 16}, [0.5] * 3, [0.2] * 3)
    ModelCheckpoint(spec, create_model(spec).state_dict(), info, (16, 16), 1, {}).save(folder / "model.pt")
    return folder / "model.pt"


def test_a_run_on_a_real_tracking_server_reads_back_through_the_client(in_tmp, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data = in_tmp / "data/processed"
    data.mkdir(parents=True)
    model = create_model(ModelSpec("cnn", 3, "max", 4))
    run = TrainingRun("server-test", {"train.lr": 0.01, "model.name": "cnn"}, {"git_commit": "abc", "git_dirty": "false"},
                      required=True, run_name="first-run")
    run.log_dataset("shapes", data, "0123456789abcdef0123456789abcdef.dir")
    for epoch in (1, 2):
        run.log_metrics({"train_loss": 1.0 / epoch, "val_miou": None}, step=epoch)
    run.log_model(model, np.zeros((2, 3, 16, 16), np.float32), registered_name="segpipe-test")
    link = run.link(save_model(in_tmp))
    link.save(in_tmp / "mlflow_run.json")
    run.finish()
    (in_tmp / "eval.json").write_text("{}")
    ResultsRun(in_tmp / "model.pt", in_tmp / "mlflow_run.json", "server-test", True, {}, {}).log(
        metrics={"test_miou": 0.75}, artifacts={"metrics": [in_tmp / "eval.json"]})

    client = MlflowClient(tracking_uri=mlflow_server)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "first-run"
    assert got.data.params == {"train.lr": "0.01", "model.name": "cnn"}
    assert got.data.tags["git_commit"] == "abc" and got.data.tags["git_dirty"] == "false"
    assert got.data.tags["model_sha256"] == link.model_sha256 == file_sha256(in_tmp / "model.pt")
    assert got.data.metrics["test_miou"] == 0.75
    assert [m.value for m in client.get_metric_history(run.run_id, "train_loss")] == [1.0, 0.5]
    assert [a.path for a in client.list_artifacts(run.run_id, "metrics")] == ["metrics/eval.json"]
    inputs = got.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("shapes", "0123456789abcdef0123456789abcdef")]
    assert [v.run_id for v in client.search_model_versions("name='segpipe-test'")] == [run.run_id]

    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model_info = mlflow.models.get_model_info("models:/segpipe-test/1")
    assert list(model_info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:]) == [3, -1, -1]


def test_results_of_a_model_whose_run_is_not_in_this_store_go_to_a_new_run_that_names_it(in_tmp):
    # A teammate pulled the model and its link, but their store has never seen the run.
    model = save_model(in_tmp)
    RunLink("0123456789abcdef0123456789abcdef", "colleagues-run", "segpipe", file_sha256(model)).save(in_tmp / "link.json")
    ResultsRun(model, in_tmp / "link.json", "segpipe", True, {"evaluate.batch_size": 8}, {"git_commit": "abc"}).log(
        metrics={"test_miou": 0.5})
    # report, later, finds the same new run by the model's hash instead of making another.
    ResultsRun(model, in_tmp / "link.json", "segpipe", True, {}, {}).log(metrics={"test_f1": 0.6})

    client = MlflowClient(tracking_uri=tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["segpipe_results_of"] == "0123456789abcdef0123456789abcdef"
    assert run.data.tags["segpipe_results_of_name"] == "colleagues-run" and run.info.run_name.startswith("colleagues-run-results-")
    assert run.data.metrics == {"test_miou": 0.5, "test_f1": 0.6} and run.data.params == {"evaluate.batch_size": "8"}
    assert run.info.status == "FINISHED"


def test_two_runs_have_different_names_even_after_seeding_every_rng(in_tmp, monkeypatch):
    import random

    from segpipe.training.loop import seed_everything

    names = []
    for _ in range(2):
        random.seed(0)
        seed_everything(0)
        names.append(new_run_name("unet", "shapes"))
    assert names[0] != names[1] and names[0].startswith("unet-shapes-")
    monkeypatch.setenv("DVC_EXP_NAME", "lofty-gaps")
    assert new_run_name("unet", "shapes") == "lofty-gaps"


def test_a_copied_project_does_not_write_into_the_original(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    original = tmp_path / "original"
    original.mkdir()
    monkeypatch.chdir(original)
    TrainingRun("segpipe", {}, {}, True, "first").finish()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    with pytest.raises(SegpipeError, match=r"copy/mlflow.db belongs to another folder: its experiment 'segpipe' keeps "
                                           r"artifacts in .*original/mlruns, outside this project .*mv mlflow.db"):
        TrainingRun("segpipe", {}, {}, True, "second")
    assert len(list((original / "mlruns").glob("*/*"))) <= 1  # nothing new in the original's artifacts


READ_ONLY = """
import sys
from segpipe.errors import SegpipeError
from segpipe.tracking.runs import TrainingRun
run = TrainingRun("segpipe", {"a": 1}, {}, False, "second")
run.log_metrics({"loss": 1.0}, step=1)
run.finish()
assert not run.active
try:
    TrainingRun("segpipe", {"a": 1}, {}, True, "third")
except SegpipeError as exc:
    print(exc)
"""


@contextmanager
def read_only(path: Path):
    """The file made read-only, also for root (who writes through permission bits): immutable."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not permitted, so no file is read-only to this process")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_is_a_warning_when_tracking_is_not_required(tmp_path):
    # Separate processes: a connection opened before the file became read-only could still write.
    create = "from segpipe.tracking.runs import TrainingRun; TrainingRun('segpipe', {}, {}, True, 'first').finish()"
    assert subprocess.run([sys.executable, "-c", create], cwd=tmp_path, env=clean_env()).returncode == 0
    with read_only(tmp_path / "mlflow.db"):
        result = subprocess.run([sys.executable, "-c", READ_ONLY], cwd=tmp_path, capture_output=True, text=True,
                                env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "going on without tracking (mlflow.required is false)" in result.stderr and "Traceback" not in result.stderr
    assert "readonly database" in result.stdout and "set mlflow.required: false" in result.stdout


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))} | {"MLFLOW_DISABLE_TELEMETRY": "true"}


def _corrupt_table(database: Path, table: str) -> None:
    """Overwrite the root page of one table with garbage, as a failing disk would."""
    import sqlite3

    with sqlite3.connect(database) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()[0]
    with open(database, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * page_size)


@pytest.mark.parametrize("required", [True, False])
def test_a_store_whose_metrics_are_corrupt_never_leaves_the_run_running(in_tmp, capsys, required):
    run = TrainingRun("segpipe", {}, {}, required, "corrupt")
    _corrupt_table(in_tmp / "mlflow.db", "metrics")
    if required:
        with pytest.raises(SegpipeError, match=r"MLflow: logging metrics failed at sqlite.*malformed"):
            run.log_metrics({"loss": 1.0}, step=1)
    else:
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_metrics({"loss": 0.5}, step=2)  # nothing more is tried, and nothing fails
        assert "going on without tracking" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=tracking_uri())
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_an_unreachable_server_fails_before_training_when_required(in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SegpipeError, match=r"tracking server at http://127.0.0.1:\d+ is unreachable .*mlflow.required: false"):
        TrainingRun("x", {}, {}, True, "x")


def test_an_unreachable_server_is_a_warning_when_not_required(in_tmp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    run = TrainingRun("x", {"a": 1}, {}, False, "x")
    run.log_metrics({"train_loss": 1.0}, step=1)
    run.log_dataset("shapes", in_tmp, None)
    run.finish()
    assert run.run_id is None
    model = save_model(in_tmp)
    ResultsRun(model, in_tmp / "absent.json", "x", False, {}, {}).log(metrics={"test_miou": 0.5})
    err = capsys.readouterr().err
    assert "is unreachable" in err and err.count("going on without tracking (mlflow.required is false)") == 2


WRITER = """
import sys
from segpipe.tracking.runs import TrainingRun
run = TrainingRun("parallel", {"worker": sys.argv[1]}, {}, True, f"writer-{sys.argv[1]}")
for step in range(15):
    run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
run.finish()
"""


def test_concurrent_writers_share_one_new_sqlite_store(in_tmp):
    # All start together on a store that does not exist yet: the migration race.
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], cwd=in_tmp, stderr=subprocess.PIPE, text=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))})
               for i in range(4)]
    errors = [w.communicate(timeout=300)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0, 0], errors
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.data.params["worker"] for r in runs) == ["0", "1", "2", "3"]
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 15 for r in runs)


@contextmanager
def another_process_inserts_it_first(database: Path, table: str, own_row=lambda row: row):
    """Just before this process's first INSERT INTO `table`, another connection inserts and commits the
    same row (a {column: value} dict, made its own by `own_row`), as a parallel run does between MLflow's
    look-up and its insert. Yields the rows inserted so and the errors this process met on `table`."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    inserted, failures = [], []

    def insert_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith(f"INSERT INTO {table} ") and not inserted:
            columns = statement[statement.index("(") + 1 : statement.index(")")].split(", ")
            row = own_row(dict(zip(columns, parameters[0] if executemany else parameters)))
            with sqlite3.connect(database) as other:
                other.execute(statement, [row[column] for column in columns])  # SQLAlchemy's own, its columns named
            inserted.append(row)

    def note_failure(context):
        if table in str(context.original_exception):
            failures.append(str(context.original_exception))

    event.listen(Engine, "before_cursor_execute", insert_first)
    event.listen(Engine, "handle_error", note_failure)
    try:
        yield inserted, failures
    finally:
        event.remove(Engine, "before_cursor_execute", insert_first)
        event.remove(Engine, "handle_error", note_failure)


def test_a_dataset_another_run_inserts_at_the_same_moment_is_linked_not_a_failure(in_tmp):
    # Parallel queued experiments log the same new dataset at once; MLflow looks it up, then inserts it.
    database = in_tmp / "mlflow.db"
    run = TrainingRun("race", {}, {}, True, "late")
    theirs = lambda row: row | {"dataset_uuid": "0" * 32}  # noqa: E731
    with another_process_inserts_it_first(database, "datasets", theirs) as (other, failures):
        run.log_dataset("shapes", in_tmp, "0123456789abcdef0123456789abcdef.dir")
    run.finish()

    assert len(other) == 1 and len(failures) == 1 and "UNIQUE constraint failed: datasets" in failures[0]
    inputs = MlflowClient(tracking_uri=f"sqlite:///{database}").get_run(run.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("shapes", "0123456789abcdef0123456789abcdef")]
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT dataset_uuid FROM datasets").fetchall() == [("0" * 32,)]  # the other run's, shared


def test_an_experiment_someone_tags_at_the_same_moment_keeps_their_tag_and_the_run_starts(in_tmp):
    # An experiment made before segpipe tagged its kind: a parallel first run, or the user in the UI, tags it
    # between segpipe's look-up and its insert.
    database = in_tmp / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").create_experiment("older")
    users_choice = lambda row: row | {"value": "finetuning"}  # noqa: E731
    with another_process_inserts_it_first(database, "experiment_tags", users_choice) as (other, failures):
        run = TrainingRun("older", {}, {}, True, "late")
    run.finish()

    assert len(other) == 1 and len(failures) == 1 and "UNIQUE constraint failed: experiment_tags" in failures[0]
    experiment = MlflowClient(tracking_uri=f"sqlite:///{database}").get_experiment_by_name("older")
    assert experiment.tags["mlflow.experimentKind"] == "finetuning"  # theirs stands
    assert MlflowClient(tracking_uri=f"sqlite:///{database}").get_run(run.run_id).info.status == "FINISHED"


def _integrity_error(driver_error: Exception):
    import sqlalchemy.exc

    return sqlalchemy.exc.IntegrityError("INSERT INTO datasets (...) VALUES (...)", {}, driver_error)


def _unique_key_errors() -> list:
    import psycopg.errors

    return [_integrity_error(sqlite3.IntegrityError("UNIQUE constraint failed: datasets.experiment_id, datasets.name")),
            _integrity_error(psycopg.errors.UniqueViolation('duplicate key value violates unique constraint "dataset_pk"'))]


def _other_integrity_errors() -> list:
    import psycopg.errors

    return [_integrity_error(sqlite3.IntegrityError("FOREIGN KEY constraint failed")),
            _integrity_error(sqlite3.IntegrityError("NOT NULL constraint failed: datasets.name")),
            _integrity_error(psycopg.errors.ForeignKeyViolation('insert or update on table "inputs" violates foreign key'))]


@pytest.mark.parametrize("through_a_server", [False, True])
def test_only_a_unique_key_error_counts_as_a_lost_insert_race_in_process_or_from_a_server(through_a_server):
    from mlflow.exceptions import MlflowException, RestException

    from segpipe.tracking.store import lost_an_insert_race

    def as_mlflow_raises_it(error):  # MLflow's store wraps a SQLAlchemy error; a server sends that text back
        exc = MlflowException(message=error, error_code="BAD_REQUEST")
        return RestException({"error_code": "BAD_REQUEST", "message": str(exc)}) if through_a_server else exc

    assert [lost_an_insert_race(as_mlflow_raises_it(e)) for e in _unique_key_errors()] == [True, True]
    assert [lost_an_insert_race(as_mlflow_raises_it(e)) for e in _other_integrity_errors()] == [False, False, False]


def test_a_broken_store_is_named(in_tmp):
    (in_tmp / "mlflow.db").write_text("this is not a database")
    with pytest.raises(SegpipeError, match=r"cannot open the MLflow store sqlite:///.*mlflow.db"):
        prepare_store(tracking_uri())


RUNS = [  # as experiment_runs reads them from MLflow: newest first
    RunSummary("a", "exp-a", 3, "1234567890abcdef", {"test_miou": 0.80, "test_f1": 0.85},
               {"model.name": "unet", "train.lr": "0.006"}, {"dvc_exp_name": "exp-a"}),
    RunSummary("b", "exp-b", 2, "1234567890abcdef", {"test_miou": 0.90, "test_f1": 0.95},
               {"model.name": "fcn", "train.lr": "0.006"}, {"dvc_exp_name": "exp-b"}),
    RunSummary("c", "c", 1, "fedcba0987654321", {"test_f1": 0.5}, {"model.name": "unet", "train.lr": "0.01"}),
]


def test_leaderboard_sorts_best_first_with_missing_metrics_last():
    table = leaderboard(RUNS, ["model.name", "train.lr"], ["test_miou", "test_f1"], "test_miou")
    assert table["run_id"].tolist() == ["b", "a", "c"]
    assert table.columns.tolist() == ["run_id", "dvc_exp_name", "git_commit", "model.name", "train.lr", "test_miou", "test_f1"]
    assert table["git_commit"].tolist() == ["1234567890", "1234567890", "fedcba0987"]
    assert leaderboard(RUNS, [], ["test_f1"], "test_f1", ascending=True)["run_id"].tolist() == ["c", "a", "b"]


def test_baseline_shows_metric_differences_and_changed_params():
    table = leaderboard(RUNS, ["model.name", "train.lr"], ["test_miou", "test_f1"], "test_miou")
    diff = against_baseline(table, "a", ["model.name", "train.lr"], ["test_miou", "test_f1"]).set_index("run_id")
    assert diff.loc["b", "test_miou vs baseline"] == pytest.approx(0.10)
    assert diff.loc["a", "test_f1 vs baseline"] == 0
    assert diff.loc["b", "params changed"] == "model.name: unet -> fcn"
    assert diff.loc["c", "params changed"] == "train.lr: 0.006 -> 0.01"
    with pytest.raises(SegpipeError, match="--baseline zzz: no such run"):
        against_baseline(table, "zzz", [], [])


def test_leaderboard_files(tmp_path):
    table = leaderboard(RUNS, ["model.name"], ["test_miou"], "test_miou")
    write_table(table, tmp_path / "runs.csv")
    assert pd.read_csv(tmp_path / "runs.csv")["run_id"].tolist() == ["b", "a", "c"]
    write_table(table, tmp_path / "runs.md")
    lines = (tmp_path / "runs.md").read_text().splitlines()
    assert lines[0].split("|")[1].strip() == "run_id" and "0.9000" in lines[2]
    with pytest.raises(SegpipeError, match=r"write .csv or .md"):
        write_table(table, tmp_path / "runs.xlsx")
