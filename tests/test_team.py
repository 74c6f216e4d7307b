"""What a team does with the pipeline: queue experiments that run in parallel, all
landing in the project's one MLflow store, and share data and models through a
DVC remote, so that a fresh clone re-runs nothing and can re-evaluate the model."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_project import (
    copy_project,
    dvc,
    failed_experiment_logs,
    git_commit,
    run,
    set_params,
    start_queue,
    wait_for_queues,
)

pytestmark = pytest.mark.e2e


def test_queued_experiments_in_parallel_all_land_in_the_projects_store(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "project", keep_store=False)
    set_params(project, **{"mlflow.log_model": False})  # not what is tested here; seconds per experiment
    git_commit(project, "experiments without the model logged")
    rates = ["0.001", "0.003"]  # two workers, one experiment each
    for rate in rates:
        dvc("exp", "run", "--queue", "-S", f"train.lr={rate}", cwd=project)
    start_queue(project, tmp_path / "queue.log")
    status = wait_for_queues({project: len(rates)})[project]
    assert status.count("Success") == 2, (status, failed_experiment_logs(project, status))

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert sorted(r.data.params["train.lr"] for r in runs) == rates
    baseline_rev = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert len({r.info.run_name for r in runs}) == 2
    for r in runs:
        assert r.info.run_name == r.data.tags["dvc_exp_name"]
        assert r.data.tags["dvc_exp_baseline_rev"] == r.data.tags["git_commit"] == baseline_rev
        assert len(r.data.tags["data_processed_dvc_md5"]) >= 32
        assert r.data.metrics["test_miou"] >= 0
        assert r.info.status == "FINISHED"
        # Artifacts land in the project, not in the temporary copies DVC ran them in.
        assert client.list_artifacts(r.info.run_id, "report")
        assert r.info.artifact_uri.startswith((project / "mlruns").resolve().as_uri())
    assert not list((project / ".dvc/tmp/exps").glob("tmp*/mlflow.db"))


def test_a_teammate_pulls_reruns_nothing_and_re_evaluates_into_their_own_store(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "project", keep_store=True)
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "shared", str(remote), cwd=project)
    dvc("push", cwd=project)
    git_commit(project, "remote")

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models/model.pt").exists()
    dvc("pull", cwd=clone)
    assert (clone / "models/model.pt").exists() and (clone / "data/processed/summary.json").exists()
    assert json.loads((clone / "metrics/eval.json").read_text()) == json.loads((project / "metrics/eval.json").read_text())
    assert "Data and pipelines are up to date" in dvc("status", cwd=clone).stdout
    assert "Running stage" not in dvc("repro", cwd=clone).stdout

    # The model's run is in the colleague's store, not in this clone's: results go to a new run that names it.
    set_params(clone, **{"evaluate.batch_size": 5})
    result = dvc("repro", cwd=clone)  # mlflow.required is true, as by default
    assert "Running stage 'evaluate'" in result.stdout and "Running stage 'train'" not in result.stdout
    original = json.loads((project / "models/mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    (mine,) = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert mine.data.tags["segpipe_results_of"] == original["run_id"]
    assert mine.info.run_name.startswith(f"{original['run_name']}-results-")
    evaluation = json.loads((clone / "metrics/eval.json").read_text())
    assert mine.data.metrics["test_miou"] == pytest.approx(evaluation["miou"])
    assert {a.path for a in client.list_artifacts(mine.info.run_id, "metrics")} == {
        "metrics/eval.json", "metrics/confusion_matrix.json", "metrics/per_image.npz"}
    # The batch size changes no score: the metrics are the colleague's, so report had nothing new to do.
    assert evaluation == json.loads((project / "metrics/eval.json").read_text())
