"""The real pipeline, end to end: `dvc repro` in a temporary git repository on a tiny
shapes dataset, then what each stage wrote, the MLflow run, and DVC's caching."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.pipeline_project import SIZE, NUM_IMAGES, create_project, dvc, run, tiny_params

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = create_project(tmp_path_factory.mktemp("project"), tiny_params())
    first = dvc("repro", cwd=root)
    (root / "first_repro.log").write_text(first.stdout + first.stderr)
    return root


def read_json(path: Path):
    return json.loads(path.read_text())


def test_every_stage_ran_and_wrote_its_outputs(project):
    log = (project / "first_repro.log").read_text()
    for stage in ("download", "preprocess", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in log

    manifest = read_json(project / "data/raw/manifest.json")
    assert manifest["classes"] == ["background", "circle", "square", "triangle"]
    assert len(manifest["pairs"]) == NUM_IMAGES

    summary = read_json(project / "data/processed/summary.json")
    assert sum(summary["counts"].values()) == NUM_IMAGES and summary["rejected"] == []
    test_images = np.load(project / "data/processed/test/images.npy")
    assert test_images.shape == (summary["counts"]["test"], SIZE, SIZE, 3) and test_images.dtype == np.uint8

    assert (project / "models/model.pt").stat().st_size > 0 and (project / "models/last.pt").stat().st_size > 0

    evaluation = read_json(project / "metrics/eval.json")
    for key in ("miou", "f1", "pixel_accuracy", "mean_class_accuracy"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert set(evaluation["per_class"]) == set(manifest["classes"])
    assert set(evaluation["per_class"]["background"]) == {"iou", "f1", "accuracy"}

    confusion = read_json(project / "metrics/confusion_matrix.json")
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == summary["counts"]["test"] * SIZE * SIZE
    assert evaluation["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)

    training = read_json(project / "metrics/train.json")
    assert training["epochs"] == 1 and training["train_images_per_second"] > 0 and 0 <= training["best_val_miou"] <= 1
    history = (project / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_miou") and len(history) == 2

    html = (project / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "test mIoU" in html
    assert f"{evaluation['miou']:.4f}" in html
    markdown = (project / "reports/report.md").read_text()
    for figure in ("training_curves", "confusion_matrix", "test_predictions"):
        assert f"figures/{figure}.png" in markdown
        assert (project / "reports/figures" / f"{figure}.png").exists()


def test_train_evaluate_and_report_are_one_mlflow_run(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1" and run.data.params["model.name"] == "unet"
    assert run.data.params["data.shapes.num_images"] == str(NUM_IMAGES)
    head = run_cmd_stdout(["git", "rev-parse", "HEAD"], project)
    assert run.data.tags["git_commit"] == head and run.data.tags["dataset"] == "shapes"

    evaluation = read_json(project / "metrics/eval.json")
    assert run.data.metrics["test_miou"] == pytest.approx(evaluation["miou"])
    assert run.data.metrics["test_pixel_accuracy"] == pytest.approx(evaluation["pixel_accuracy"])
    assert run.data.metrics["test_iou_background"] == pytest.approx(evaluation["per_class"]["background"]["iou"])
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.html", "report/report.md"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "metrics")} == {
        "metrics/eval.json", "metrics/confusion_matrix.json"}


def run_cmd_stdout(cmd, cwd) -> str:
    return run(cmd, cwd).stdout.strip()


def test_a_second_repro_runs_nothing(project):
    again = dvc("repro", cwd=project)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout


def test_an_experiment_on_train_params_reruns_train_evaluate_and_report_only(project):
    result = dvc("exp", "run", "-S", "train.epochs=2", cwd=project)
    ran = {s for s in ("download", "preprocess", "train", "evaluate", "report") if f"Running stage '{s}'" in result.stdout}
    assert ran == {"train", "evaluate", "report"}
    assert read_json(project / "metrics/train.json")["epochs"] == 2


def test_prediction_on_new_images_of_any_size(project, tmp_path):
    image = np.asarray(Image.open(next((project / "data/raw/images").iterdir())).convert("RGB").resize((50, 37)))
    Image.fromarray(image).save(tmp_path / "new.jpg")
    result = run([sys.executable, "-m", "segpipe.cli", "predict", str(tmp_path / "new.jpg"),
                  "--model", "models/model.pt", "--out", str(tmp_path / "out")], project)
    assert "new_mask.png" in result.stdout
    with Image.open(tmp_path / "out/new_mask.png") as mask:
        assert mask.size == (50, 37) and mask.mode == "P"
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    assert Image.open(tmp_path / "out/new_overlay.png").size == (50, 37)


def test_an_unknown_model_stops_the_stage_before_any_work(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["name"] = "resnet"
    bad = project / "bad_params"
    bad.mkdir()
    (bad / "params.yaml").write_text(yaml.safe_dump(params))
    before = (project / "data/raw/manifest.json").read_bytes()
    result = run([sys.executable, str(project / "stages/download.py")], bad, check=False)
    assert result.returncode == 2
    assert "model.name: unknown model 'resnet'; valid choices: cnn, fcn, unet" in result.stderr
    assert "Traceback" not in result.stderr
    assert (project / "data/raw/manifest.json").read_bytes() == before


def test_a_bad_mask_stops_preprocess_naming_it_and_keeps_the_old_outputs(project):
    mask_path = project / "data/raw/masks/0003.png"
    original = mask_path.read_bytes()
    summary_before = (project / "data/processed/summary.json").read_bytes()
    mask_path.unlink()  # DVC links outputs from its cache: replace the file, never write through the link
    Image.fromarray(np.full((SIZE, SIZE), 9, np.uint8)).save(mask_path)
    try:
        result = run([sys.executable, "stages/preprocess.py"], project, check=False)
        assert result.returncode == 2
        assert "masks/0003.png: labels [9] out of range" in result.stderr
        assert "preprocess.on_bad_sample: skip" in result.stderr
        assert (project / "data/processed/summary.json").read_bytes() == summary_before
    finally:
        mask_path.unlink()
        mask_path.write_bytes(original)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_stops_training_before_the_first_epoch(project):
    model_before = (project / "models/model.pt").read_bytes()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"}
    result = run([sys.executable, "stages/train.py"], project, check=False, env=env)
    assert result.returncode == 2
    assert "is unreachable" in result.stderr and "set mlflow.required: false" in result.stderr
    assert "epoch 1/" not in result.stdout
    assert (project / "models/model.pt").read_bytes() == model_before


def test_without_required_tracking_the_pipeline_trains_and_keeps_its_results_in_files(project):
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["mlflow"]["required"] = False
    params["train"]["seed"] = 7  # a change that re-runs train, evaluate and report
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = dvc("repro", cwd=project, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"})
        assert "training without MLflow tracking (mlflow.required is false)" in result.stderr
        assert "trained without MLflow tracking" in result.stderr
        assert "Running stage 'report'" in result.stdout
        assert read_json(project / "metrics/eval.json")["miou"] is not None
        assert (project / "reports/report.html").exists()
    finally:
        (project / "params.yaml").write_text(original)
