"""What a team does with the pipeline: queue experiments that run in parallel, all
landing in the project's one MLflow store, and share data and models through a
DVC remote so a fresh clone re-runs nothing."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_project import create_project, dvc, run, tiny_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = create_project(tmp_path_factory.mktemp("team") / "project", tiny_params())
    dvc("repro", cwd=root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "baseline"], root)
    return root


def wait_for_queue(root, timeout=480):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=root).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def test_queued_experiments_in_parallel_all_land_in_the_projects_store(project):
    rates = ["0.001", "0.002", "0.003"]
    for rate in rates:
        dvc("exp", "run", "--queue", "-S", f"train.lr={rate}", cwd=project)
    dvc("queue", "start", "-j", "2", cwd=project)
    status = wait_for_queue(project)
    assert status.count("Success") == 3, status

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    queued = [r for r in runs if "dvc_exp_name" in r.data.tags]
    assert sorted(r.data.params["train.lr"] for r in queued) == rates
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert len({r.data.tags["dvc_exp_name"] for r in queued}) == 3
    for r in queued:
        assert r.data.tags["dvc_exp_baseline_rev"] == baseline
        assert r.data.tags["git_commit"] == baseline
        assert len(r.data.tags["data_processed_dvc_md5"]) >= 32
        assert r.data.metrics["test_miou"] >= 0
        assert r.info.status == "FINISHED"
    # The temporary copies are gone, and nothing was written into them that was lost.
    assert not list((project / ".dvc/tmp/exps").glob("tmp*/mlflow.db"))


def test_a_fresh_clone_pulls_data_and_models_and_reruns_nothing(project, tmp_path):
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "shared", str(remote), cwd=project)
    dvc("push", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "remote"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models/model.pt").exists()
    dvc("pull", cwd=clone)
    assert (clone / "models/model.pt").exists() and (clone / "data/processed/summary.json").exists()
    assert json.loads((clone / "metrics/eval.json").read_text()) == json.loads((project / "metrics/eval.json").read_text())
    assert "Data and pipelines are up to date" in dvc("status", cwd=clone).stdout
    assert "Running stage" not in dvc("repro", cwd=clone).stdout
