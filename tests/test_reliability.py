"""Bad input and faults that once passed silently or crashed with a traceback: each now
gets a clear error naming the file or key and the fix, or is reported and handled.
(docs/RELIABILITY.md lists them all, with the test that shows each.)"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segpipe.atomic import atomic_dir, atomic_file
from segpipe.config import PreprocessParams, ResizeParams, SplitParams, parse_params
from segpipe.data.images import BadImageFile, read_rgb
from segpipe.data.preprocess import preprocess
from segpipe.data.raw import RawDataset
from segpipe.data.sources import import_dataset
from segpipe.errors import SegpipeError
from tests.conftest import REPO_ROOT

SPLIT = SplitParams(seed=0, val_fraction=0.2, test_fraction=0.2)


def prep(on_bad_sample="error", on_leak="warn", min_side=8, to=8) -> PreprocessParams:
    return PreprocessParams(resize=ResizeParams(by="shorter_side", to=to), min_side=min_side,
                            on_bad_sample=on_bad_sample, on_leak=on_leak, split=SPLIT, workers=1)


def folder(raw_params, root, **spec):
    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": str(root / "images"), "masks": str(root / "masks"),
                                     "classes": ["background", "object"]} | spec
    return parse_params(raw_params)


def write_images(root, n=10, side=16, seed=0):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros((side, side), np.uint8)
        mask[2 : 4 + i % 5, 3:9] = 1
        labels.append(mask)
    return labels


# --- masks whose foreground used to become "ignore" ------------------------------------

def test_masks_saved_as_0_and_255_stop_with_the_option_that_reads_them(raw_params, tmp_path):
    for i, mask in enumerate(write_images(tmp_path)):
        Image.fromarray(mask * 255).save(tmp_path / "masks" / f"im{i}.png")
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert raw.pairs == [] and len(raw.problems) == 10
    with pytest.raises(SegpipeError) as error:
        preprocess(raw, prep(), tmp_path / "processed")
    text = str(error.value)
    assert "mask values [255] are not class indices 0..1" in text and "data.folder.ignore_value: 255" in text
    assert "data.folder.values" in text and "skipping would drop every such file" in text
    assert "on_bad_sample: skip" not in text
    # The fix the message names works: 255 is the second class.
    raw = import_dataset(folder(raw_params, tmp_path, values=[0, 255]), tmp_path / "raw2", tmp_path / "cache")
    summary = preprocess(raw, prep(), tmp_path / "processed2")
    assert summary["class_pixels"]["train"]["object"] > 0


def test_a_void_label_in_every_mask_names_ignore_value_not_skipping(raw_params, tmp_path):
    for i, mask in enumerate(write_images(tmp_path)):
        mask[0, :] = 11  # a void label outside the class range, in every file
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(SegpipeError, match=r"set data.folder.ignore_value: 11"):
        preprocess(raw, prep(), tmp_path / "processed")
    raw = import_dataset(folder(raw_params, tmp_path, ignore_value=11), tmp_path / "raw2", tmp_path / "cache")
    assert not raw.problems and (np.asarray(Image.open(tmp_path / "raw2" / raw.pairs[0].mask))[0] == 255).all()


def test_one_bit_masks_are_two_class_masks(raw_params, tmp_path):
    labels = write_images(tmp_path)
    for i, mask in enumerate(labels):
        Image.fromarray(mask.astype(bool)).save(tmp_path / "masks" / f"im{i}.png")  # mode "1"
    assert Image.open(tmp_path / "masks/im0.png").mode == "1"
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert not raw.problems
    for pair in raw.pairs:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "raw" / pair.mask)), labels[int(pair.id[2:])])


def test_sixteen_bit_masks_keep_their_values(raw_params, tmp_path):
    labels = write_images(tmp_path)
    for i, mask in enumerate(labels):
        Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "masks" / f"im{i}.png")
    assert Image.open(tmp_path / "masks/im0.png").mode.startswith("I")
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert "mask values [65535] are not class indices 0..1" in raw.problems[0].reason
    raw = import_dataset(folder(raw_params, tmp_path, values=[0, 65535]), tmp_path / "raw2", tmp_path / "cache")
    assert not raw.problems
    assert np.array_equal(np.asarray(Image.open(tmp_path / "raw2" / raw.pairs[0].mask)), labels[0])


def test_a_class_without_training_pixels_stops_preprocess(raw_params, tmp_path):
    for i, mask in enumerate(write_images(tmp_path)):
        Image.fromarray(mask * 255).save(tmp_path / "masks" / f"im{i}.png")
    # Declaring 255 the ignore value hides the foreground: no "object" pixel is left.
    raw = import_dataset(folder(raw_params, tmp_path, ignore_value=255), tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(SegpipeError, match=r"class 'object' \(index 1\) has no pixels at all in the training split.*"
                                           r"data.folder.values: \[0, 255\]"):
        preprocess(raw, prep(), tmp_path / "processed")


# --- photos and files ----------------------------------------------------------------

def test_a_sixteen_bit_photo_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "photo16.png")
    assert Image.open(tmp_path / "photo16.png").mode.startswith("I;16")
    rgb = read_rgb(tmp_path / "photo16.png")
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, -1].tolist() == [255, 255, 255]
    assert abs(int(rgb[0, 32, 0]) - round(ramp[0, 32] / 257)) <= 1  # mid-grey stays mid-grey


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_a_bad_file_not_a_traceback(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(15000, 12000))  # 180 megapixels
    with pytest.raises(BadImageFile, match=r"bomb.png: too large to decode safely .*downscale it or remove it"):
        read_rgb(tmp_path / "bomb.png")


def test_a_mask_without_an_image_and_a_tiny_image_are_reported_and_skippable(raw_params, tmp_path):
    for i, mask in enumerate(write_images(tmp_path)):
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "images" / "dot.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "masks" / "dot.png")
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(SegpipeError) as error:
        preprocess(raw, prep(), tmp_path / "processed")
    text = str(error.value)
    assert "2 of 12 samples" in text
    assert "masks/orphan.png: no image with this stem" in text and "dot.png is only 1x1, below preprocess.min_side" in text
    summary = preprocess(raw, prep(on_bad_sample="skip"), tmp_path / "processed2")
    assert sorted(r["id"] for r in summary["rejected"]) == ["dot", "orphan"] and sum(summary["counts"].values()) == 10


def test_a_truncated_image_with_resize_is_a_bad_sample_that_skip_leaves_out(raw_params, tmp_path):
    for i, mask in enumerate(write_images(tmp_path, side=32)):
        Image.fromarray(mask[::2, ::2]).save(tmp_path / "masks" / f"im{i}.png")  # masks at half the size
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "images/im0.png").unlink()
    (tmp_path / "images/im0.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raw = import_dataset(folder(raw_params, tmp_path, resize="image_to_mask"), tmp_path / "raw", tmp_path / "cache")
    assert [p.id for p in raw.problems] == ["im0"] and "im0.jpg" in raw.problems[0].reason
    summary = preprocess(raw, prep(on_bad_sample="skip"), tmp_path / "processed")
    assert [r["id"] for r in summary["rejected"]] == ["im0"] and sum(summary["counts"].values()) == 9


def test_the_same_image_in_two_splits_is_reported_and_can_stop_preprocess(raw_params, tmp_path):
    labels = write_images(tmp_path, n=12)
    for i, mask in enumerate(labels):
        Image.fromarray(mask).save(tmp_path / "masks" / f"im{i}.png")
    for i in range(1, 12):  # every image a copy of the first: some copies land in each split
        (tmp_path / "images" / f"im{i}.png").write_bytes((tmp_path / "images/im0.png").read_bytes())
    raw = import_dataset(folder(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    summary = preprocess(raw, prep(), tmp_path / "processed")
    assert len(summary["leaks"]) == 1 and set(summary["leaks"][0]["splits"]) == {"train", "val", "test"}
    assert sorted(summary["leaks"][0]["ids"]) == sorted(f"im{i}" for i in range(12))
    with pytest.raises(SegpipeError, match=r"(?s)1 images appear in more than one split .*im0 \(train\) = .*preprocess.on_leak: warn"):
        preprocess(raw, prep(on_leak="error"), tmp_path / "processed2")


# --- training that diverges -------------------------------------------------------------

def test_a_nan_loss_stops_the_epoch_naming_the_step(tmp_path):
    from segpipe.config import AugmentParams
    from segpipe.data.batches import Batches
    from segpipe.data.processed import ProcessedSplit
    from segpipe.device import runtime_for
    from segpipe.models import ModelSpec, create_model
    from segpipe.training.loop import TrainingDiverged, train_one_epoch
    from segpipe.training.losses import create_loss

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    masks = [np.zeros((16, 16), np.uint8) for _ in range(8)]  # background only
    split = ProcessedSplit.from_arrays("train", images, masks, [str(i) for i in range(8)])
    runtime = runtime_for("cpu", False, False)
    batches = Batches(split, 4, runtime, [0.5] * 3, [0.25] * 3)
    model = create_model(ModelSpec("cnn", 2, "max", 4))
    # Only the absent class weighs anything: the weighted mean is 0/0.
    loss_fn = create_loss("cross_entropy", 2, 255, [0.0, 1.0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    augment = AugmentParams(scale_min=1.0, scale_max=1.0, random_crop=False, hflip=0.0, vflip=0.0)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan or infinite at epoch 3, step 1 of 2"):
        train_one_epoch(model, batches, loss_fn, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                        runtime, augment, 255, torch.Generator().manual_seed(0), epoch=3)


# --- leftovers and clashes ---------------------------------------------------------------

def test_staging_folders_of_killed_processes_are_cleaned_on_the_next_write(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".processed.tmp-{dead}-abcd1234"
    (stale / "train").mkdir(parents=True)
    (stale / "train/images.npy").write_bytes(b"x" * 1000)
    live = tmp_path / f".processed.tmp-{os.getpid()}-live0000"
    live.mkdir()
    stale_file = tmp_path / f".model.pt.tmp-{dead}-00000000"
    stale_file.write_bytes(b"half a model")
    with atomic_dir(tmp_path / "processed") as staging:
        (staging / "summary.json").write_text("{}")
    with atomic_file(tmp_path / "model.pt", "wb") as handle:
        handle.write(b"model")
    assert not stale.exists() and not stale_file.exists()
    assert live.exists()  # a running process's staging folder is left alone
    assert (tmp_path / "processed/summary.json").exists() and (tmp_path / "model.pt").read_bytes() == b"model"


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_params_changed_during_a_stage_fail_it_with_the_advice_to_queue(tmp_path, monkeypatch, capsys):
    from segpipe import runner as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_bytes((REPO_ROOT / "params.yaml").read_bytes())

    def main():
        stage.stage_params()
        # another `dvc exp run -S ...` in the same workspace rewrites params.yaml meanwhile
        (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("lr: 0.006", "lr: 0.01"))

    with pytest.raises(SystemExit) as exit_:
        stage.run_stage(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "params.yaml changed while this stage ran" in err and "dvc exp run --queue" in err


def test_a_stage_interrupted_by_sigterm_exits_130_without_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = ("from segpipe.runner import run_stage\nimport time\n"
              "def main():\n    print('ready', flush=True)\n    time.sleep(60)\nrun_stage(main)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err


def test_run_dataset_problems_round_trip_through_the_manifest(tmp_path):
    from segpipe.data.raw import Pair, Problem

    raw = RawDataset(tmp_path, "folder", ["a", "b"], [Pair("x", "i.png", "m.png")],
                     problems=[Problem("y", "y.png", None, "y.png: no mask", None)])
    raw.write_manifest()
    assert RawDataset.read(tmp_path).problems == raw.problems


def test_ctrl_c_stops_a_stage_even_when_it_was_started_with_sigint_ignored(tmp_path):
    import signal
    import subprocess
    import sys

    script = ("from segpipe.runner import run_stage\nimport time\n"
              "def main():\n    print('ready', flush=True)\n    time.sleep(60)\nrun_stage(main)\n")
    # As a shell starts a background job: SIGINT ignored, which survives exec into the stage.
    ignoring_sigint = ("import os, signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                       "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n")
    process = subprocess.Popen([sys.executable, "-c", ignoring_sigint, script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in err


@pytest.mark.parametrize("model,fix", [
    ({"name": "smp_unet", "encoder": "resnet35"}, "unknown encoder 'resnet35'; nearest: .*resnet34"),
    ({"name": "smp_unet", "encoder": None}, "smp_unet needs an encoder"),
    ({"name": "unet", "encoder": "resnet34"}, "model.encoder: 'resnet34' chooses the encoder of the smp_\\* models"),
    ({"weights": "weights/missing.pth"}, "model.weights: weights/missing.pth not found"),
])
def test_the_validate_stage_refuses_a_model_section_train_would_refuse(tmp_path, raw_params, model, fix):
    # validate runs before DVC removes train's outputs: what would stop train must stop it here.
    raw_params["model"] |= model
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages/validate.py")], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 2 and re.search(fix, result.stderr), result.stderr
    assert not (tmp_path / "data/params_checked.txt").exists()
