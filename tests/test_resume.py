"""Training survives being killed: the next `dvc repro` resumes from the last completed
epoch (model, optimizer, schedule, random states, history, the same MLflow run) and
ends exactly where an uninterrupted run ends; Ctrl-C exits cleanly and marks the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipeline_project import copy_project, dvc, set_params, user_env

# One worker runs the module: its tests share the uninterrupted run.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("resume")]
# Enough epochs that a signal sent after the first one lands mid-training, even on a fast machine.
EPOCHS = 12
# The model itself is not logged to MLflow here: seconds per training, and no part of what is tested.
QUICK = {"train.epochs": EPOCHS, "mlflow.log_model": False}


def runs_of(project: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])


@pytest.fixture(scope="module")
def uninterrupted(baseline, tmp_path_factory) -> Path:
    project = copy_project(baseline, tmp_path_factory.mktemp("straight") / "project")
    set_params(project, **QUICK)
    dvc("repro", cwd=project)
    return project


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if text in line:
            return
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"never printed {text!r}: {process.stderr.read()}")


def resume_epoch(project: Path) -> int:
    return torch.load(project / "models/resume/state.pt", weights_only=True)["epoch"]


def test_sigkill_mid_epoch_then_dvc_repro_resumes_to_the_same_result(baseline, uninterrupted, tmp_path):
    project = copy_project(baseline, tmp_path / "project")
    set_params(project, **QUICK)
    process = start([sys.executable, "-m", "dvc", "repro"], project)
    wait_for_line(process, f"epoch 1/{EPOCHS}")
    os.killpg(process.pid, signal.SIGKILL)  # dvc and the train stage, mid-way through epoch 2
    process.wait(timeout=30)
    assert 1 <= resume_epoch(project) < EPOCHS
    assert not (project / "models/model.pt").exists()  # nothing that looks finished
    _, (killed,) = runs_of(project)
    assert killed.info.status == "RUNNING"

    result = dvc("repro", cwd=project)
    assert "resuming from epoch" in result.stdout
    assert not (project / "models/resume").exists()
    client, (resumed,) = runs_of(project)  # the same run, finished
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["resumed_from_epoch"]) >= 1
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train_loss")) == list(range(1, EPOCHS + 1))
    # Same seed on CPU: exactly the uninterrupted run's model and scores.
    assert (project / "models/model.pt").read_bytes() == (uninterrupted / "models/model.pt").read_bytes()
    for name in ("eval.json", "confusion_matrix.json"):
        assert json.loads((project / "metrics" / name).read_text()) == json.loads((uninterrupted / "metrics" / name).read_text())
    history = [line.split(",")[:7] for line in (project / "metrics/train_history.csv").read_text().splitlines()]
    straight = [line.split(",")[:7] for line in (uninterrupted / "metrics/train_history.csv").read_text().splitlines()]
    assert history == straight  # losses and validation scores of every epoch
    assert json.loads((project / "metrics/train.json").read_text())["resumed"] is True


def test_ctrl_c_exits_cleanly_marks_the_run_killed_and_changed_params_start_over(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "project")
    set_params(project, **QUICK)
    process = start([sys.executable, "stages/train.py"], project)
    wait_for_line(process, f"epoch 1/{EPOCHS}")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "training interrupted during epoch" in err and "resumes from there" in err
    _, (killed,) = runs_of(project)
    assert killed.info.status == "KILLED"
    assert resume_epoch(project) >= 1

    # Other params: the interrupted training is not resumed but replaced, and says so.
    set_params(project, **{"train.lr": 0.003})
    result = dvc("repro", "train", cwd=project)  # evaluate and report have nothing to show here
    assert "holds an interrupted training" in result.stderr and "training from the start" in result.stderr
    assert "resuming" not in result.stdout
    _, runs = runs_of(project)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
