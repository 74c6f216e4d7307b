"""The real pipeline, end to end: `dvc repro` in a temporary git repository on a tiny
shapes dataset, then what each stage wrote, the MLflow run, and DVC's caching."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from segpipe.hashing import file_sha256
from tests.pipeline_project import NUM_IMAGES, SIDE, copy_project, dvc, git_commit, run, set_params

pytestmark = pytest.mark.e2e
STAGES = ("download", "preprocess", "train", "evaluate", "report")


def read_json(path: Path):
    return json.loads(path.read_text())


def ran(result) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in result.stdout}


def runs_of(project: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_every_stage_ran_and_wrote_its_outputs(baseline):
    log = (baseline.parent / "first_repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log

    manifest = read_json(baseline / "data/raw/manifest.json")
    assert manifest["classes"] == ["background", "circle", "square", "triangle"]
    assert len(manifest["pairs"]) == NUM_IMAGES and manifest["problems"] == []

    summary = read_json(baseline / "data/processed/summary.json")
    assert sum(summary["counts"].values()) == NUM_IMAGES and summary["rejected"] == [] and summary["leaks"] == []
    assert all(n > 0 for n in summary["class_pixels"]["train"].values())
    test_shapes = np.load(baseline / "data/processed/test/shapes.npy")
    assert test_shapes.tolist() == [[SIDE, SIDE]] * summary["counts"]["test"]
    assert np.load(baseline / "data/processed/test/images.npy").size == summary["counts"]["test"] * SIDE * SIDE * 3

    assert (baseline / "models/model.pt").stat().st_size > 0 and not (baseline / "models/resume").exists()
    link = read_json(baseline / "models/mlflow_run.json")
    assert link["model_sha256"] == file_sha256(baseline / "models/model.pt")

    evaluation = read_json(baseline / "metrics/eval.json")
    for key in ("miou", "f1", "pixel_accuracy", "mean_class_accuracy"):
        assert 0.0 <= evaluation[key] <= 1.0
    assert set(evaluation["working_resolution"]) == {"miou", "f1", "pixel_accuracy", "mean_class_accuracy"}
    assert "per_class" not in evaluation and evaluation["test_images"] == summary["counts"]["test"]
    per_class = read_json(baseline / "metrics/per_class.json")
    assert [c["class"] for c in per_class] == manifest["classes"]

    confusion = read_json(baseline / "metrics/confusion_matrix.json")
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == summary["counts"]["test"] * SIDE * SIDE
    assert evaluation["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)
    assert [c["pixels"] for c in per_class] == matrix.sum(axis=1).tolist()
    with np.load(baseline / "metrics/per_image.npz") as per_image:
        assert per_image["matrices"].shape == (summary["counts"]["test"], 4, 4)
        assert (per_image["matrices"].sum(axis=0) == matrix).all()
    # Per-image results live in DVC's cache, not in git.
    assert "/per_image.npz" in (baseline / "metrics/.gitignore").read_text().split()

    training = read_json(baseline / "metrics/train.json")
    assert training["epochs"] == 1 and training["train_images_per_second"] > 0 and training["resumed"] is False
    history = (baseline / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_miou") and len(history) == 2

    html = (baseline / "reports/report.html").read_text()
    # Curves, confusion matrix, and the best and the worst test image (report.num_examples: 2).
    assert html.count("data:image/png;base64,") == 4 and "test mIoU" in html
    assert sorted(p.name for p in (baseline / "reports/predictions").iterdir()) == [f"{i}.png" for i in read_json(
        baseline / "data/processed/test/ids.json")[:2]]
    assert f"{evaluation['miou']:.4f}" in html


def test_train_evaluate_and_report_are_one_named_mlflow_run_with_honest_lineage(baseline):
    client, runs = runs_of(baseline)
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.info.status == "FINISHED"
    assert re.fullmatch(r"unet-shapes-\d{8}-\d{6}-[0-9a-f]{4}", mlrun.info.run_name)
    assert mlrun.data.params["train.epochs"] == "1" and mlrun.data.params["model.name"] == "unet"
    init_commit = run(["git", "rev-list", "--max-parents=0", "HEAD"], baseline).stdout.strip()
    # Trained on a clean checkout: DVC rewriting dvc.lock and metrics/ during the run does not count.
    assert mlrun.data.tags["git_commit"] == init_commit and mlrun.data.tags["git_dirty"] == "false"
    assert len(mlrun.data.tags["params_sha256"]) == 64 and mlrun.data.tags["dataset"] == "shapes"
    assert mlrun.data.tags["model_sha256"] == file_sha256(baseline / "models/model.pt")
    assert read_json(baseline / "models/mlflow_run.json")["run_id"] == mlrun.info.run_id

    evaluation = read_json(baseline / "metrics/eval.json")
    assert mlrun.data.metrics["test_miou"] == pytest.approx(evaluation["miou"])
    assert mlrun.data.metrics["test_pixel_accuracy"] == pytest.approx(evaluation["pixel_accuracy"])
    per_class = {c["class"]: c for c in read_json(baseline / "metrics/per_class.json")}
    assert mlrun.data.metrics["test_per_class/iou_background"] == pytest.approx(per_class["background"]["iou"])
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train_loss")] == [1]
    (epoch_1,) = csv.DictReader((baseline / "metrics/train_history.csv").read_text().splitlines())
    assert [m.value for m in client.get_metric_history(mlrun.info.run_id, "best_so_far/val_miou")] == [
        pytest.approx(float(epoch_1["val_miou"]))]
    # The first validation images predicted after the epoch, for the image slider.
    assert sum(a.path.startswith("images/val_predictions~") and a.path.endswith(".png")
               for a in client.list_artifacts(mlrun.info.run_id, "images")) == 3
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/per_class_table.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id, "metrics")} == {
        "metrics/eval.json", "metrics/confusion_matrix.json", "metrics/per_image.npz"}


def test_nothing_reruns_and_bytecode_never_enters_a_hash(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    # The stages wrote bytecode beside the code they ran (as on any user's machine).
    assert list((project / "src/segpipe/models/__pycache__").glob("*.pyc"))
    # Import every module, in-function imports included, and run a stage's code again.
    every_module = ("import importlib, pkgutil, segpipe; [importlib.import_module(m.name) for m in "
                    "pkgutil.walk_packages(segpipe.__path__, 'segpipe.')]")
    run([sys.executable, "-c", every_module], project, env={"PYTHONPATH": str(project / "src")})
    run([sys.executable, "stages/evaluate.py"], project)
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout
    assert ran(dvc("repro", cwd=project)) == set()


def test_an_edit_reruns_exactly_the_stages_that_run_that_room(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")

    def stale_after_editing(module: str) -> set[str]:
        with open(project / "src/segpipe" / module, "a") as handle:
            handle.write("\n# an edit\n")
        return set(json.loads(dvc("status", "--json", cwd=project).stdout))

    # ONNX export and prediction run in no stage; the team stack is not even in the package.
    assert stale_after_editing("serving/export.py") == set()
    assert stale_after_editing("serving/predict.py") == set()
    # Augmentation is training's: evaluate and report wait for a new model, not for the edit.
    assert stale_after_editing("training/augment.py") == {"train"}
    assert stale_after_editing("reporting/document.py") == {"train", "report"}


def test_an_experiment_on_train_params_reruns_train_evaluate_and_report_under_its_own_name(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    set_params(project, **{"mlflow.log_model": False})  # not what is tested here; seconds per training
    git_commit(project, "without the model logged")
    result = dvc("exp", "run", "-n", "two-epochs", "-S", "train.epochs=2", cwd=project)
    assert ran(result) == {"train", "evaluate", "report"}
    assert read_json(project / "metrics/train.json")["epochs"] == 2
    _, (experiment,) = runs_of(project)
    _, (original,) = runs_of(baseline)
    assert experiment.info.run_name == experiment.data.tags["dvc_exp_name"] == "two-epochs"
    # The experiment's params differ from the commit, and its run says so; the baseline's did not.
    assert (original.data.tags["git_dirty"], experiment.data.tags["git_dirty"]) == ("false", "true")
    assert original.data.tags["params_sha256"] != experiment.data.tags["params_sha256"]
    # What changed, as the run's description and in the report, against the experiment's baseline.
    baseline_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert experiment.data.tags["mlflow.note.content"] == (
        f"Params changed against the DVC experiment's baseline (commit {baseline_commit[:8]}):\n\n- `train.epochs`: 1 → 2")
    assert "<tr><td>train.epochs</td><td>1</td><td>2</td></tr>" in (project / "reports/report.html").read_text()

    # `dvc plots diff`, offline: the experiment's curves, bars, heatmap and overlays beside the baseline's.
    from tests.html_references import external_references

    plots = json.loads(dvc("plots", "diff", "HEAD", "--json", cwd=project).stdout)
    for plot_id in ("Loss", "Test IoU per class", "Test confusion matrix, rows sum to 1"):
        assert {r["rev"] for r in plots["data"][plot_id][0]["content"]["data"]["values"]} == {"HEAD", "workspace"}
    dvc("plots", "diff", "HEAD", "-o", str(tmp_path / "diff"), cwd=project)
    assert external_references((tmp_path / "diff/index.html").read_text()) == []
    assert len(list((tmp_path / "diff/static").glob("*_reports_predictions_*.png"))) == 4   # 2 images x 2 revisions


def test_changing_the_working_resolution_gives_new_arrays_never_stale_ones(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    for side in (24, SIDE):  # there and back: the second may come from DVC's run cache, and must be right
        set_params(project, **{"preprocess.resize.to": side})
        result = dvc("repro", "preprocess", cwd=project)
        shapes = np.load(project / "data/processed/train/shapes.npy")
        assert shapes.tolist() == [[side, side]] * len(shapes), result.stdout
        assert read_json(project / "data/processed/summary.json")["resize"] == {"by": "shorter_side", "to": side}


def test_prediction_on_new_images_of_any_size(baseline, tmp_path):
    image = np.asarray(Image.open(next((baseline / "data/raw/images").iterdir())).convert("RGB").resize((50, 37)))
    Image.fromarray(image).save(tmp_path / "new.jpg")
    result = run([sys.executable, "-m", "segpipe.cli", "predict", str(tmp_path / "new.jpg"),
                  "--model", "models/model.pt", "--out", str(tmp_path / "out")], baseline)
    assert "new_mask.png" in result.stdout
    with Image.open(tmp_path / "out/new_mask.png") as mask:
        assert mask.size == (50, 37) and mask.mode == "P"
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    assert Image.open(tmp_path / "out/new_overlay.png").size == (50, 37)


def test_an_unknown_model_stops_train_before_any_work(baseline, tmp_path):
    params = yaml.safe_load((baseline / "params.yaml").read_text())
    params["model"]["name"] = "resnet"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, str(baseline / "stages/train.py")], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert ("error: model.name: unknown model 'resnet'; valid choices: cnn, deeplabv3_mobilenet_v3_large, "
            "deeplabv3_resnet50, fcn, fcn_resnet50, lraspp_mobilenet_v3_large, smp_deeplabv3, smp_deeplabv3plus, smp_dpt, "
            "smp_fpn, smp_linknet, smp_manet, smp_pan, smp_pspnet, smp_segformer, smp_unet, smp_unetplusplus, "
            "smp_upernet, unet\n") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "models").exists()


def test_a_bad_mask_stops_preprocess_naming_it_and_keeps_the_old_outputs(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    mask_path = project / "data/raw/masks/0003.png"
    summary_before = (project / "data/processed/summary.json").read_bytes()
    mask_path.unlink()  # DVC may link outputs from its cache: replace the file, never write through it
    Image.fromarray(np.full((SIDE, SIDE), 9, np.uint8)).save(mask_path)
    result = run([sys.executable, "stages/preprocess.py"], project, check=False)
    assert result.returncode == 2
    assert "masks/0003.png: labels [9] out of range" in result.stderr
    assert "preprocess.on_bad_sample: skip" in result.stderr
    assert (project / "data/processed/summary.json").read_bytes() == summary_before
    assert not list((project / "data").glob(".processed.tmp-*"))


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_stops_training_before_the_first_epoch(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    model_before = (project / "models/model.pt").read_bytes()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"}
    result = run([sys.executable, "stages/train.py"], project, check=False, env=env)
    assert result.returncode == 2
    assert "is unreachable" in result.stderr and "set mlflow.required: false" in result.stderr
    assert "epoch 1/" not in result.stdout
    assert (project / "models/model.pt").read_bytes() == model_before


def test_without_required_tracking_the_pipeline_trains_and_keeps_its_results_in_files(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    set_params(project, **{"mlflow.required": False, "train.seed": 7})  # re-runs train, evaluate and report
    result = dvc("repro", cwd=project, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"})
    assert "going on without tracking (mlflow.required is false)" in result.stderr
    assert ran(result) == {"train", "evaluate", "report"}
    assert read_json(project / "metrics/eval.json")["miou"] is not None
    assert read_json(project / "models/mlflow_run.json")["run_id"] is None
    report = (project / "reports/report.html").read_text()
    assert "MLflow tracking was not active for this report" in report and f"{read_json(project / 'metrics/eval.json')['miou']:.4f}" in report


def test_a_copied_project_with_its_store_stops_before_writing_into_the_original(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy", keep_store=True)
    set_params(project, **{"train.seed": 3})
    original_runs = sorted(p.name for p in (baseline / "mlruns").glob("*/*"))
    result = dvc("repro", cwd=project, check=False)
    assert result.returncode != 0
    assert "mlflow.db belongs to another folder" in result.stderr and "mv mlflow.db mlflow.db.copied" in result.stderr
    assert "epoch 1/" not in result.stdout
    assert sorted(p.name for p in (baseline / "mlruns").glob("*/*")) == original_runs
