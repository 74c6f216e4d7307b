"""The smp models through the stages themselves, on a tiny dataset whose native 45x45 masks are not the
30x30 working resolution (neither side divisible by an encoder's 32): a training SIGKILLed mid-way resumes
to exactly the uninterrupted training's model and history, in the same MLflow run; the resumed model is then
evaluated at native resolution, reported, and predicted with by `segpipe predict` in sliding windows; and
FPN and Segformer train under two processes (DDP on gloo) into one run and one model.

Unet/resnet34 goes through evaluate and report in tests/test_smp_models.py's pipeline test; FPN/mobilenet_v2
and Segformer/mit_b0 go through them here. The killed and the resumed training are processes of their own, as
a user's are; the uninterrupted training, evaluate and report run their stage's main() in this process, from
the project's folder: the same code, without paying again for importing torch, smp, timm and MLflow (about ten
seconds a process here)."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segpipe.paths
from segpipe.cli import main
from segpipe.data.processed import ProcessedSplit
from segpipe.device import runtime_for
from segpipe.models.checkpoint import load_model_checkpoint
from segpipe.serving.inference import Predictor, WindowPlan
from segpipe.tracking.metric_names import HEADLINE
from tests.conftest import REPO_ROOT
from tests.pipeline_project import copy_project, create_project, run, set_params, tiny_params, user_env
from tests.test_predict import synthetic_photo
from tests.test_resume import resume_epoch, runs_of, wait_for_line

# One worker runs the module: its tests share the processed dataset.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("smp_downstream")]
NATIVE, WORKING = 45, 30
# Six epochs, the kill sent once the first is saved: five more and publishing (a second or more) stand
# between the kill and a finished training. The model is not logged to MLflow: no part of what is tested here.
EPOCHS = 6
# One thread per training: make test's two workers share two cores, and a stage's two OpenMP threads
# then wait on each other whenever the other worker holds a core (epochs of 7-12 s instead of 0.2 s here).
THREADS = 1
ENV = {"OMP_NUM_THREADS": str(THREADS)}


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A project with data/processed/ made by the stages: 12 shapes images of 45x45 at 30x30, one batch
    of training images (8) per epoch, two each to validate and test."""
    params = tiny_params()
    params["data"]["shapes"] |= {"num_images": 12, "image_size": NATIVE}
    params["preprocess"]["resize"] = {"by": "shorter_side", "to": WORKING}
    params["train"] |= {"epochs": EPOCHS, "batch_size": 8}
    params["mlflow"]["log_model"] = False
    root = create_project(tmp_path_factory.mktemp("smp") / "project", params)
    for stage in ("download", "preprocess"):
        run([sys.executable, f"stages/{stage}.py"], root)
    counts = {split: len(ProcessedSplit.load(root / "data/processed", split)) for split in ("train", "val", "test")}
    assert counts == {"train": 8, "val": 2, "test": 2}
    return root


def project_for(processed: Path, folder: Path, name: str, encoder: str) -> Path:
    project = copy_project(processed, folder / "project")
    set_params(project, **{"model.name": name, "model.encoder": encoder})
    return project


def history(project: Path) -> list[list[str]]:
    """metrics/train_history.csv without the two timing columns (images per second, seconds)."""
    rows = [line.split(",") for line in (project / "metrics/train_history.csv").read_text().splitlines()]
    assert rows[0][7:] == ["images_per_second", "seconds"]
    return [row[:7] for row in rows]


def in_process(stage: str, project: Path, monkeypatch) -> None:
    """The stage's main(), as DVC runs it from the project's folder."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(segpipe.paths, "PROJECT_ROOT", project)  # what paths.py finds in a stage's own process
    monkeypatch.syspath_prepend(str(REPO_ROOT / "stages"))  # where a stage's `import _syspath` looks
    runpy.run_path(str(project / f"stages/{stage}.py"), run_name=f"segpipe_stage_{stage}")["main"]()


@pytest.fixture
def as_in_a_stage_process(monkeypatch):
    """This process's environment and threads as the stages' own processes get them."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):  # as user_env() leaves them for the stages' processes
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


def start_training(project: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "stages/train.py"], cwd=project, env=user_env(ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("name, encoder, downstream", [
    ("smp_unet", "resnet34", False), ("smp_fpn", "mobilenet_v2", True), ("smp_segformer", "mit_b0", True),
])
def test_a_killed_smp_training_resumes_to_the_uninterrupted_result_then_evaluates_reports_and_predicts(
        processed, tmp_path, monkeypatch, as_in_a_stage_process, name, encoder, downstream):
    straight = project_for(processed, tmp_path / "straight", name, encoder)
    project = project_for(processed, tmp_path / "killed", name, encoder)
    process = start_training(project)
    wait_for_line(process, f"epoch 1/{EPOCHS}")  # printed after the epoch's resume state is written
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    saved = resume_epoch(project)
    assert 1 <= saved < EPOCHS and not (project / "models/model.pt").exists()
    _, (killed,) = runs_of(project)
    assert killed.info.status == "RUNNING"

    resumed = run([sys.executable, "stages/train.py"], project, env=ENV)
    assert f"resuming from epoch {saved} of {EPOCHS}" in resumed.stdout
    assert not (project / "models/resume").exists()
    client, (finished,) = runs_of(project)  # the killed run, finished
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(finished.info.run_id, "train_loss")) == list(range(1, EPOCHS + 1))
    assert json.loads((project / "metrics/train.json").read_text())["resumed"] is True

    in_process("train", straight, monkeypatch)
    # Same seed on CPU, whatever the encoder: exactly the uninterrupted training's best model, losses and scores.
    assert history(project) == history(straight) and len(history(project)) == EPOCHS + 1
    assert (project / "models/model.pt").read_bytes() == (straight / "models/model.pt").read_bytes()
    if downstream:
        evaluated_at_native_resolution(project, monkeypatch)
        reported(project, name, encoder, monkeypatch)
        predicted_in_windows(project, tmp_path)


@pytest.mark.parametrize("name, encoder", [("smp_fpn", "mobilenet_v2"), ("smp_segformer", "mit_b0")])
def test_an_smp_model_trains_under_two_processes_into_one_run_and_one_model(processed, tmp_path, name, encoder):
    """train.nproc: 2 on the CPU (gloo): each process takes half of every batch; the first writes the outputs and
    records the one run. (Unet/resnet34 does the same in tests/test_smp_models.py's pipeline test.)"""
    project = project_for(processed, tmp_path, name, encoder)
    set_params(project, **{"train.nproc": 2, "train.epochs": 1})
    result = run([sys.executable, "stages/train.py"], project, env=ENV)
    assert "x 2 processes" in result.stdout
    checkpoint = load_model_checkpoint(project / "models/model.pt")
    assert (checkpoint.spec.name, checkpoint.spec.encoder) == (name, encoder)
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 1 and 0 <= summary["best_val_miou"] <= 1
    _, (only,) = runs_of(project)
    assert only.info.status == "FINISHED" and only.data.params["train.nproc"] == "2"
    assert only.data.params["model.encoder"] == encoder


def evaluated_at_native_resolution(project: Path, monkeypatch) -> None:
    in_process("evaluate", project, monkeypatch)
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert set(evaluation) == {*HEADLINE, "working_resolution", "test_images"} and evaluation["test_images"] == 2
    assert all(0 <= evaluation[k] <= 1 and 0 <= evaluation["working_resolution"][k] <= 1 for k in HEADLINE)
    confusion = json.loads((project / "metrics/confusion_matrix.json").read_text())
    matrix = np.array(confusion["matrix"])
    # Every pixel of the two 45x45 test masks, scored at their own size (no ignored pixels in shapes).
    assert confusion["resolution"] == "native" and matrix.sum() == 2 * NATIVE * NATIVE
    assert evaluation["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)
    with np.load(project / "metrics/per_image.npz") as per_image:
        assert list(per_image["ids"]) == list(ProcessedSplit.load(project / "data/processed", "test").ids)
        assert np.array_equal(per_image["matrices"].sum(axis=0), matrix)
        assert [m.sum() for m in per_image["matrices"]] == [NATIVE * NATIVE] * 2


def reported(project: Path, name: str, encoder: str, monkeypatch) -> None:
    in_process("report", project, monkeypatch)
    html = (project / "reports/report.html").read_text()
    assert f"segpipe: {name} ({encoder} encoder) on shapes" in html and "pooling" not in html.split("</h1>")[0]
    test_ids = list(ProcessedSplit.load(project / "data/processed", "test").ids)
    assert sorted(p.stem for p in (project / "reports/predictions").iterdir()) == sorted(test_ids)  # num_examples: 2
    for figure in ("training_curves", "confusion_matrix", "best_test_images", "worst_test_images"):
        assert (project / f"reports/figures/{figure}.png").stat().st_size > 1000
    rows = (project / "reports/per_class.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["background", "circle", "square", "triangle"]


def predicted_in_windows(project: Path, tmp_path: Path) -> None:
    photo = synthetic_photo(NATIVE, 5 * NATIVE, seed=4)
    Image.fromarray(photo).save(tmp_path / "wide.png")  # 30x150 at the working resolution
    checkpoint = load_model_checkpoint(project / "models/model.pt")
    assert tuple(checkpoint.input_shape) == (WORKING, WORKING)  # windows for sides over 60
    assert main(["predict", str(tmp_path / "wide.png"), "--model", str(project / "models/model.pt"),
                 "--out", str(tmp_path / "out")]) == 0
    (entry,) = json.loads((tmp_path / "out/predictions.json").read_text())["predicted"]
    assert entry["size"] == [NATIVE, 5 * NATIVE] and entry["working_size"] == [WORKING, 5 * WORKING] and entry["windows"] > 1
    # Every pixel scored: windows of 30 at offsets 32 apart (the encoder's stride) once left NaN between them.
    predictor = Predictor(checkpoint, runtime_for("cpu", amp=False, channels_last=False), WindowPlan.parse("auto", (30, 30), 0.5))
    scored = next(predictor.score([photo]))
    assert scored.windows == entry["windows"] and torch.isfinite(scored.logits).all()
    with Image.open(tmp_path / "out/wide_mask.png") as mask:
        assert np.array_equal(np.asarray(mask), scored.mask())  # at the photo's own size
