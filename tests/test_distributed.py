"""Training under torchrun with DDP: each process gets its share of exactly what one process
would see, two CPU processes on gloo give what one process gives for the same global
batch, and only one of them logs to MLflow and writes outputs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from segpipe.config import AugmentParams
from segpipe.data.batches import Batches
from segpipe.training.augment import augment_batch
from tests.conftest import REPO_ROOT
from tests.pipeline_project import copy_project, dvc, run, set_params
from tests.test_resolution import CPU, labelled_split

AUGMENT = AugmentParams(scale_min=0.8, scale_max=1.25, random_crop=True, hflip=0.5, vflip=0.5)


@pytest.mark.parametrize("crop", [None, (8, 12)])
def test_each_process_gets_its_share_of_exactly_what_one_process_sees(crop):
    shapes = [(16, 20)] * 12 if crop is None else [(20, 30), (24, 18), (10, 12), (16, 20)] * 3
    split = labelled_split(shapes, seed=1)
    one = Batches(split, 4, CPU, [0.5] * 3, [0.25] * 3, crop=crop)
    shares = [Batches(split, 4, CPU, [0.5] * 3, [0.25] * 3, crop=crop, shard=(rank, 2)) for rank in range(2)]
    generators = [torch.Generator().manual_seed(0) for _ in range(3)]
    iterators = [share.iterate(g) for share, g in zip(shares, generators[1:])]
    steps = 0
    for batch in one.iterate(generators[0]):
        whole = augment_batch(batch.images, batch.masks, AUGMENT, 255, generators[0])
        parts = [augment_batch(*next(it)[:2], AUGMENT, 255, g, (rank, 2))
                 for rank, (it, g) in enumerate(zip(iterators, generators[1:]))]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0]) and torch.equal(torch.cat([p[1] for p in parts]), whole[1])
        steps += 1
    assert steps == one.training_steps() == shares[0].training_steps() == 3


def test_ddp_on_two_cpu_processes_matches_one_process_for_the_same_global_batch(tmp_path):
    worker = REPO_ROOT / "tests/ddp_worker.py"
    env = {"PYTHONPATH": str(REPO_ROOT)}
    run([sys.executable, str(worker), str(tmp_path / "one.pt")], REPO_ROOT, env=env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker),
         str(tmp_path / "two.pt")], REPO_ROOT, env=env)
    one, two = (torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt"))
    for key, value in one["state"].items():
        assert torch.allclose(two["state"][key], value, atol=1e-6), key
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-6)  # the loss reduced over both processes
    assert one["state"]["0.weight"].abs().sum() > 0


@pytest.mark.e2e
def test_the_pipeline_under_two_processes_records_one_run_and_one_set_of_outputs(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    set_params(project, **{"train.nproc": 2, "mlflow.log_model": False})
    result = dvc("repro", cwd=project)
    assert "x 2 processes" in result.stdout
    assert result.stdout.count("epoch 1/1") == 1  # one process speaks for both

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (only,) = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert only.info.status == "FINISHED" and only.data.params["train.nproc"] == "2"
    assert json.loads((project / "models/mlflow_run.json").read_text())["run_id"] == only.info.run_id
    assert json.loads((project / "metrics/train.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (project / "models").iterdir() if not p.name.startswith(".")) == [
        "mlflow_run.json", "model.pt"]
    assert len(client.get_metric_history(only.info.run_id, "train_loss")) == 1
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert 0 <= evaluation["miou"] <= 1
