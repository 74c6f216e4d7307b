"""MLflow tracking against real stores: a SQLite file, a real `mlflow server` on a
loopback port, an unreachable server, and many processes writing at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from segpipe.compare import against_baseline, leaderboard, write_table
from segpipe.errors import SegpipeError
from segpipe.models import create_model
from segpipe.tracking import TrainingRun, log_to_run, prepare_store, tracking_uri


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
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


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


def test_a_run_on_a_real_tracking_server_reads_back_through_the_client(in_tmp, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data = in_tmp / "data/processed"
    data.mkdir(parents=True)
    model = create_model("cnn", 3, "max", 4)
    with TrainingRun("server-test", {"train.lr": 0.01, "model.name": "cnn"}, {"git_commit": "abc", "git_dirty": "false"},
                     required=True) as run:
        run.log_dataset("shapes", data, "0123456789abcdef0123456789abcdef.dir")
        for epoch in (1, 2):
            run.log_metrics({"train_loss": 1.0 / epoch, "val_miou": None}, step=epoch)
        run.log_model(model, np.zeros((2, 3, 16, 16), np.float32), registered_name="segpipe-test")
    (in_tmp / "eval.json").write_text("{}")
    log_to_run(run.run_id, True, metrics={"test_miou": 0.75}, artifacts={"metrics": [in_tmp / "eval.json"]})

    client = MlflowClient(tracking_uri=mlflow_server)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"train.lr": "0.01", "model.name": "cnn"}
    assert got.data.tags["git_commit"] == "abc" and got.data.tags["git_dirty"] == "false"
    assert got.data.metrics["test_miou"] == 0.75
    assert [m.value for m in client.get_metric_history(run.run_id, "train_loss")] == [1.0, 0.5]
    assert [a.path for a in client.list_artifacts(run.run_id, "metrics")] == ["metrics/eval.json"]
    inputs = got.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("shapes", "0123456789abcdef0123456789abcdef")]
    assert [v.run_id for v in client.search_model_versions("name='segpipe-test'")] == [run.run_id]

    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model_info = mlflow.models.get_model_info("models:/segpipe-test/1")
    assert list(model_info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:]) == [3, 16, 16]


def test_an_unreachable_server_fails_before_training_when_required(in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SegpipeError, match=r"tracking server at http://127.0.0.1:\d+ is unreachable .*mlflow.required: false"):
        TrainingRun("x", {}, {}, required=True)


def test_an_unreachable_server_is_a_warning_when_not_required(in_tmp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with TrainingRun("x", {"a": 1}, {}, required=False) as run:
        run.log_metrics({"train_loss": 1.0}, step=1)
        run.log_dataset("shapes", in_tmp, None)
    assert run.run_id is None
    log_to_run(run.run_id, False, metrics={"test_miou": 0.5})
    err = capsys.readouterr().err
    assert "training without MLflow tracking (mlflow.required is false)" in err
    assert "trained without MLflow tracking; results are in metrics/" in err


WRITER = """
import sys
from segpipe.tracking import TrainingRun
with TrainingRun("parallel", {"worker": sys.argv[1]}, {}, required=True) as run:
    for step in range(15):
        run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
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


def test_a_broken_store_is_named(in_tmp):
    (in_tmp / "mlflow.db").write_text("this is not a database")
    with pytest.raises(SegpipeError, match=r"cannot open the MLflow store sqlite:///.*mlflow.db"):
        prepare_store(tracking_uri())


RUNS = pd.DataFrame({
    "run_id": ["a", "b", "c"],
    "tags.dvc_exp_name": ["exp-a", "exp-b", None],
    "tags.git_commit": ["1234567890abcdef", "1234567890abcdef", "fedcba0987654321"],
    "params.model.name": ["unet", "fcn", "unet"],
    "params.train.lr": ["0.006", "0.006", "0.01"],
    "metrics.test_miou": [0.80, 0.90, np.nan],
    "metrics.test_f1": [0.85, 0.95, 0.5],
})


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
