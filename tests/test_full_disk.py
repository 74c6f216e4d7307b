"""Sizes that cannot fit and full disks (issue 20): preprocess stops before writing what the
disk cannot hold, a crop many times the images is named, a full disk (ENOSPC, injected here)
is one sentence that names the path and says nothing was published, results that could not
be recorded leave their MLflow run marked FAILED, and a store the user chose elsewhere keeps
its artifacts beside it. (docs/RELIABILITY.md lists them.)"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

from segpipe.atomic import atomic_dir, atomic_file
from segpipe.config import PreprocessParams, ResizeParams, SplitParams, parse_params
from segpipe.data import preprocess as preprocess_module
from segpipe.data.preprocess import preprocess
from segpipe.data.sources import import_dataset
from segpipe.errors import SegpipeError
from segpipe.runner import run_stage

Usage = namedtuple("Usage", "total used free")
NO_SPACE = "No space left on device"


def prep(to: int = 8) -> PreprocessParams:
    return PreprocessParams(resize=ResizeParams(by="shorter_side", to=to), min_side=2, on_bad_sample="error",
                            on_leak="warn", split=SplitParams(seed=0, val_fraction=0.2, test_fraction=0.2), workers=1)


@pytest.fixture
def raw(raw_params, tmp_path):
    """Ten 16x20 photos with two-class masks, imported as the folder source does."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / f"p{i}.png")
        mask = np.zeros((16, 20), np.uint8)
        mask[: 4 + i, :6] = 1
        Image.fromarray(mask).save(tmp_path / "masks" / f"p{i}.png")
    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks"),
                                     "classes": ["background", "object"]}
    return import_dataset(parse_params(raw_params), tmp_path / "raw", tmp_path / "cache")


def test_preprocess_stops_before_writing_what_the_disk_cannot_hold(raw, tmp_path, monkeypatch):
    # 10 images to 8x10 (shorter side 16 -> 8): 4 bytes a pixel; the 2 test masks also at 16x20: 3,200 + 640 bytes.
    monkeypatch.setattr(preprocess_module.shutil, "disk_usage", lambda path: Usage(10**6, 10**6 - 3000, 3000))
    with atomic_dir(tmp_path / "processed") as staging, pytest.raises(SegpipeError) as error:
        preprocess(raw, prep(to=8), staging)
    assert str(error.value) == (f"preprocess would write about 3.8 kB to {tmp_path}, but only 3.0 kB is free there: lower "
                                "preprocess.resize.to (the working resolution), or free space or move the project to a "
                                "larger disk; nothing was written")
    monkeypatch.setattr(preprocess_module.shutil, "disk_usage", lambda path: Usage(10**6, 10**6 - 3840, 3840))
    summary = preprocess(raw, prep(to=8), tmp_path / "fits")  # exactly the estimate: it fits
    written = sum(p.stat().st_size for p in (tmp_path / "fits").rglob("*.npy") if p.name in ("images.npy", "masks.npy",
                                                                                           "native_masks.npy"))
    assert written - 7 * 128 == 3840 and sum(summary["counts"].values()) == 10  # 7 .npy headers of 128 bytes each


def test_a_full_disk_during_preprocess_is_one_sentence_and_publishes_nothing(raw, tmp_path, monkeypatch):
    with atomic_dir(tmp_path / "processed") as staging:
        (staging / "kept.txt").write_text("the earlier output")

    def full(handle, data, position):  # what writing a sample's pixels into its split's files meets
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SegpipeError) as error, atomic_dir(tmp_path / "processed") as staging:
        preprocess(raw, prep(), staging)
    message = str(error.value)
    assert message.startswith(f"no space left on the device holding {tmp_path / 'processed'} (") and " MB free)" in message
    assert "nothing was published" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".processed")] == []  # no staging left behind
    assert (tmp_path / "processed" / "kept.txt").read_text() == "the earlier output"


def test_a_full_disk_writing_a_file_keeps_the_old_file(tmp_path, monkeypatch):
    (tmp_path / "train.json").write_text("old")
    with pytest.raises(SegpipeError, match=r"^no space left on the device holding .*train\.json \(.* MB free\): nothing "
                                           r"was published"), atomic_file(tmp_path / "train.json") as handle:
        handle.write("new")
        raise OSError(errno.ENOSPC, NO_SPACE)
    assert (tmp_path / "train.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_a_full_disk_anywhere_in_a_stage_is_one_sentence_and_exit_2(tmp_path, capsys):
    def main():  # what torch.save or an MLflow artifact copy raises
        raise OSError(errno.ENOSPC, NO_SPACE, str(tmp_path / "mlruns" / "model.pt"))

    with pytest.raises(SystemExit) as stopped:
        run_stage(main)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert err.startswith(f"error: no space left on the device holding {tmp_path / 'mlruns' / 'model.pt'} (")
    assert "nothing was published" in err and err.count("\n") == 1


def test_a_crop_many_times_the_images_is_named():
    from segpipe.training.setup import oversized_crop

    shapes = np.array([[64, 64], [48, 64]])
    assert oversized_crop((128, 128), shapes) is None  # 4 times: a crop that pads is allowed
    assert oversized_crop(None, shapes) is None
    assert oversized_crop((1000, 1000), shapes) == (
        "train.crop 1000x1000 is 244 times the largest training image at the working resolution (64x64): every crop "
        "is mostly padding, which costs memory and time and teaches nothing; set train.crop to at most [64, 64], or "
        "null to train on whole images")


# --- MLflow ---------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path, monkeypatch):
    """A project folder as the working directory, with a store that MLFLOW_TRACKING_URI puts on another disk."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere / 'mlflow.db'}")
    return project, elsewhere


def test_artifacts_go_beside_the_store_the_user_chose(store):
    from segpipe.tracking.store import Tracking

    project, elsewhere = store
    tracking = Tracking(required=True)
    experiment = tracking.mlflow.get_experiment(tracking.experiment_id("chosen"))
    assert experiment.artifact_location == (elsewhere / "mlruns").as_uri()
    assert not (project / "mlruns").exists()


def test_results_that_could_not_be_logged_leave_the_run_failed_not_finished(store, monkeypatch, capsys):
    from mlflow import MlflowClient

    from segpipe.hashing import file_sha256
    from segpipe.tracking.runs import ResultsRun, RunLink

    project, elsewhere = store
    (project / "model.pt").write_bytes(b"weights")
    (project / "report.html").write_text("<html></html>")
    uri = f"sqlite:///{elsewhere / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    trained = client.create_run(client.create_experiment("segpipe"), run_name="trained")
    client.set_terminated(trained.info.run_id, "FINISHED")
    RunLink(trained.info.run_id, "trained", "segpipe", file_sha256(project / "model.pt")).save(project / "link.json")

    def full(self, run_id, local_path, artifact_path=None):
        raise OSError(errno.ENOSPC, NO_SPACE, str(elsewhere / "mlruns" / "report.html"))

    monkeypatch.setattr(MlflowClient, "log_artifact", full)
    run = ResultsRun(project / "model.pt", project / "link.json", "segpipe", False, {}, {})
    assert run.run_id == trained.info.run_id
    run.log(metrics={"ci_low": 0.5}, artifacts={"report": [project / "report.html"]})
    assert "No space left on device" in capsys.readouterr().err
    recorded = MlflowClient(tracking_uri=uri).get_run(trained.info.run_id)
    assert recorded.info.status == "FAILED" and recorded.data.metrics["ci_low"] == 0.5
    assert recorded.data.tags["segpipe_incomplete"].startswith(f"recording into run {trained.info.run_id} failed: ")
    assert shutil.disk_usage(elsewhere).free > 0  # (a real disk: only the upload was made to fail)
