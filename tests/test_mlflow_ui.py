"""What the MLflow UI shows: the experiment opens on its training runs (MLflow 3's experiment kind), `make ui`
prints the runs table's address, best-so-far metrics beside the last, and the per-class table with intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from segpipe.tracking.store import Tracking
from tests.test_tracking import in_tmp  # noqa: F401  (the fixture: a temporary project folder, no tracking URI set)


def test_segpipe_experiments_open_on_their_training_runs_new_or_existing(in_tmp, capsys):
    from segpipe.tracking.ui import main

    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp / 'mlflow.db'}")
    made = Tracking(required=True).experiment_id("segpipe")
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    # An experiment made before segpipe set the kind gets it; one whose kind a user chose keeps theirs.
    older = client.create_experiment("older", artifact_location=(in_tmp / "mlruns").as_uri())
    chosen = client.create_experiment("chosen", artifact_location=(in_tmp / "mlruns").as_uri(),
                                      tags={"mlflow.experimentKind": "genai_development"})
    Tracking(required=True).experiment_id("older")
    Tracking(required=True).experiment_id("chosen")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"

    assert main([f"sqlite:///{in_tmp / 'mlflow.db'}", "http://127.0.0.1:5000"]) == 0
    assert capsys.readouterr().out == (f"MLflow UI, the runs of experiment 'segpipe': "
                                       f"http://127.0.0.1:5000/#/experiments/{made}/runs?workflowType=machine_learning\n")


def test_make_ui_without_a_store_says_to_run_first(in_tmp, capsys):
    from segpipe.tracking.ui import main

    assert main([f"sqlite:///{in_tmp / 'mlflow.db'}", "http://127.0.0.1:5000"]) == 0
    assert capsys.readouterr().out == "MLflow UI: http://127.0.0.1:5000 (no runs yet: `make run` first)\n"
    assert not (in_tmp / "mlflow.db").exists()


def test_best_so_far_is_the_running_best_of_each_validation_score():
    from segpipe.tracking.metric_names import best_so_far

    history = [{"epoch": 1, "val_miou": 0.2, "val_f1": 0.3, "val_pixel_accuracy": 0.9},
               {"epoch": 2, "val_miou": 0.5, "val_f1": None, "val_pixel_accuracy": 0.8},
               {"epoch": 3, "val_miou": 0.3, "val_f1": 0.4, "val_pixel_accuracy": 0.85}]
    assert best_so_far(history, 1) == {"best_so_far/val_miou": 0.2, "best_so_far/val_f1": 0.3,
                                       "best_so_far/val_pixel_accuracy": 0.9}
    assert best_so_far(history, 3) == {"best_so_far/val_miou": 0.5, "best_so_far/val_f1": 0.4,
                                       "best_so_far/val_pixel_accuracy": 0.9}


def test_class_iou_intervals_come_from_the_same_resamples():
    from segpipe.evaluation.intervals import class_iou_intervals

    # Three images, each [[3, 1], [1, 3]]: every resample sums to 3x that, IoU 0.6 for both classes.
    same = np.array([[[3, 1], [1, 3]]] * 3)
    intervals = class_iou_intervals(same, ["background", "shape"], samples=50)
    assert {name: (i.low, i.high) for name, i in intervals.items()} == {"background": (0.6, 0.6), "shape": (0.6, 0.6)}
    # Image 0: 4 background pixels, right; image 1: 4 shape pixels, one taken for background. Resamples {0, 0},
    # {0, 1}, {1, 1}: background IoU 1, 4/5, 0; shape IoU undefined (left out), 3/4, 6/8.
    mixed = np.array([[[4, 0], [0, 0]], [[0, 0], [1, 3]]])
    bounds = class_iou_intervals(mixed, ["background", "shape"], samples=200)
    assert (bounds["background"].low, bounds["background"].high) == (0.0, 1.0)
    assert (bounds["shape"].low, bounds["shape"].high) == (0.75, 0.75)
    assert class_iou_intervals(mixed, ["background", "shape"], samples=0) == {}


def test_epoch_images_land_in_the_run_for_the_image_slider(in_tmp):
    from segpipe.tracking.runs import TrainingRun

    run = TrainingRun("segpipe", {"train.lr": 0.01}, {}, required=True, run_name="images")
    strip = np.zeros((8, 20, 3), dtype=np.uint8)
    run.log_images({"img0": strip, "img1": strip + 255}, step=1)
    run.log_images({"img0": strip, "img1": strip + 255}, step=2)
    run.finish()
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp / 'mlflow.db'}")
    logged = [a.path for a in client.list_artifacts(run.run_id, "images")]
    # MLflow's image slider: per key and step one PNG and its compressed preview, named by key and step.
    assert len(logged) == 4 * 2
    assert sorted(p.split("+timestamp")[0] for p in logged if p.endswith(".png")) == [
        f"images/val_predictions~img{i}+step+{step}" for i in (0, 1) for step in (1, 2)]


def test_the_per_class_table_with_intervals_is_an_mlflow_table(in_tmp):
    import json

    from segpipe.tracking.runs import ResultsRun

    (in_tmp / "model.pt").write_bytes(b"weights")
    run = ResultsRun(in_tmp / "model.pt", in_tmp / "mlflow_run.json", "segpipe", True, {"train.lr": 0.01}, {})
    rows = [{"class": "background", "iou": 0.9, "iou_ci95_low": 0.85, "iou_ci95_high": 0.93},
            {"class": "shape", "iou": 0.6, "iou_ci95_low": None, "iou_ci95_high": None}]
    run.log_table(rows, "report/per_class_table.json")
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp / 'mlflow.db'}")
    table = json.loads(Path(client.download_artifacts(run.run_id, "report/per_class_table.json", str(in_tmp))).read_text())
    assert table["columns"] == ["class", "iou", "iou_ci95_low", "iou_ci95_high"]
    assert table["data"] == [["background", 0.9, 0.85, 0.93], ["shape", 0.6, None, None]]


def test_epoch_image_keys_are_ones_mlflow_accepts_whatever_the_photos_are_called():
    from segpipe.training.epoch_images import image_key

    # MLflow's log_image refuses keys outside [A-Za-z0-9_\-./ ]: a photo named IMG(1) or café must not stop training.
    assert image_key("horse001") == "horse001" and image_key("a b-c.d_e") == "a b-c.d_e"
    assert image_key("IMG(1)") == "IMG_1_" and image_key("café") == "caf_" and image_key("o'neil+x") == "o_neil_x"
    assert image_key("dir/name") == "dir_name"   # no folders of keys from a path-like id
