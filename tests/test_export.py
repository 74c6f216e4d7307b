"""The model outside segpipe: `segpipe export` to ONNX (checked against PyTorch, with
its metadata), and the model training logs to MLflow, loaded in a clean process
and served by `mlflow models serve` on 127.0.0.1 (started once, while other tests run)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from segpipe.cli import main
from segpipe.data.resolution import Resize
from segpipe.models.checkpoint import load_model_checkpoint, model_metadata
from segpipe.serving.export import ATOL, ONNX_OPSET, RTOL, tolerance
from segpipe.serving.inference import model_input
from segpipe.tracking.runs import TrainingRun
from tests.pipeline_project import user_env
from tests.test_predict import TIE, assert_same_mask, read_mask, reference_logits, synthetic_photo, tiny_checkpoint

# One worker runs the module: its tests share module-scoped fixtures.
pytestmark = pytest.mark.xdist_group("export")

# Two photos whose working shapes (shorter side to 64) differ from the training shape 64x64.
PHOTO_SHAPES = [(150, 210), (333, 250)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def photos(folder) -> list[Path]:
    paths = []
    for k, (h, w) in enumerate(PHOTO_SHAPES):
        paths.append(folder / f"photo{k}.png")
        Image.fromarray(synthetic_photo(h, w, seed=20 + k)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def model_path(folder, photos) -> Path:
    """A tiny unet (base_channels 4): skips, concatenation and four poolings to export."""
    return tiny_checkpoint(folder / "model.pt", [np.asarray(Image.open(p)) for p in photos], name="unet")


def photo_batch(path: Path, data) -> np.ndarray:
    photo = np.asarray(Image.open(path).convert("RGB"))
    return model_input([photo], Resize(**data.resize).shape_for(*photo.shape[:2]), data).numpy()


# --- ONNX -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_export(folder, model_path) -> tuple[Path, str]:
    out, printed = folder / "model.onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--model", str(model_path), "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_onnx_matches_pytorch_within_tolerance_and_carries_the_metadata(onnx_export, model_path, photos):
    path, printed = onnx_export
    assert f"written: {path} (ONNX opset {ONNX_OPSET};" in printed
    assert f"tolerance atol={ATOL:g} + rtol={RTOL:g} x largest |logit|" in printed and "1x3x64x64" in printed
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    checkpoint = load_model_checkpoint(model_path)
    assert {p.key: json.loads(p.value) for p in model.metadata_props} == model_metadata(checkpoint)
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert (metadata["classes"], metadata["ignore_index"], metadata["resize"]) == (
        ["background", "horse"], 255, {"by": "shorter_side", "to": 64})
    assert (metadata["mean"], metadata["std"], metadata["training_input_shape"]) == (
        [0.45, 0.43, 0.38], [0.27, 0.26, 0.28], [64, 64])
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert (model.graph.input[0].name, dims) == ("images", ["batch", 3, "height", "width"])

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch_model = checkpoint.build_model()
    for batch in [photo_batch(p, checkpoint.data) for p in photos] + [np.concatenate([photo_batch(photos[0], checkpoint.data)] * 2)]:
        got = session.run(["logits"], {"images": batch})[0]
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(batch))
        assert got.shape == tuple(expected.shape) and got.shape[-2:] in {(64, 90), (85, 64)}
        assert np.abs(got - expected.numpy()).max() <= tolerance(expected.numpy())
        assert_same_mask(got[0].argmax(axis=0), expected[0])


def test_an_onnx_graph_that_disagrees_with_pytorch_fails_loudly_and_writes_nothing(onnx_export, model_path, folder,
                                                                                   monkeypatch, capsys):
    checkpoint = load_model_checkpoint(model_path)
    state = {k: v.clone() for k, v in checkpoint.state.items()}
    state["classifier.bias"] += torch.tensor([0.0, 0.05])  # the same architecture, other weights
    other = folder / "other.pt"
    type(checkpoint)(checkpoint.spec, state, checkpoint.data, checkpoint.input_shape, 1, {}).save(other)
    # Export the other model, but let the graph be the first one's: ONNX no longer matches PyTorch.
    monkeypatch.setattr("segpipe.serving.export.onnx_model", lambda model, example, metadata: onnx.load(onnx_export[0]))
    out = folder / "other.onnx"
    assert main(["export", "--model", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {out}: ONNX Runtime's logits differ from PyTorch's by up to 0.05 on an input of shape (1, 3, 64, 64)" in err
    assert "more than the tolerance 0.00" in err and "(atol=0.0001 + rtol=0.0001 x the largest |logit|" in err
    assert "the file was not written" in err
    assert not out.exists() and not list(folder.glob(".other.onnx*"))


# --- MLflow -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedModel:
    uri: str
    tracking_uri: str
    folder: Path


@pytest.fixture(scope="module")
def logged_model(folder, model_path) -> LoggedModel:
    """The model logged as the train stage logs it, into a SQLite store of its own."""
    store = folder / "store"
    store.mkdir()
    checkpoint = load_model_checkpoint(model_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store)  # the store and its artifacts live in the current folder
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DVC_ROOT", raising=False)
        run = TrainingRun("segpipe-export-test", {"model.name": "unet"}, {}, required=True, run_name="tiny-unet")
        example = model_input([synthetic_photo(64, 64, seed) for seed in (1, 2)], (64, 64), checkpoint.data).numpy()
        run.log_model(checkpoint.build_model(), example, None, metadata=model_metadata(checkpoint))
        run.finish()
    return LoggedModel(f"runs:/{run.run_id}/model", f"sqlite:///{store / 'mlflow.db'}", store)


def mlflow_env(logged_model: LoggedModel) -> dict:
    """A user's environment (the venv's commands on PATH, no outside MLflow settings),
    pointed at the test's store; bytecode stays off as on this machine."""
    keep = {k: os.environ[k] for k in ("PYTHONDONTWRITEBYTECODE",) if k in os.environ}
    return user_env({"MLFLOW_TRACKING_URI": logged_model.tracking_uri, **keep})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(logged_model):
    """`mlflow models serve` as the docs say, started now and waited for in the test that
    sends the request: it takes a while to start, and the tests in between run meanwhile."""
    port = free_port()
    log = open(logged_model.folder / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", logged_model.uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=mlflow_env(logged_model), cwd=logged_model.folder,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield f"http://127.0.0.1:{port}", process, logged_model.folder / "serve.log"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # its own session: mlflow and the uvicorn it starts
    process.wait(timeout=30)
    log.close()


# The docs' recipe (docs/PREDICT.md), with no segpipe import: the model and its metadata suffice.
CLIENT = r"""
import json, sys
import mlflow, numpy as np, torch
from PIL import Image
from torch.nn import functional as F

uri, out, *photos = sys.argv[1:]
model = mlflow.pytorch.load_model(uri)
meta = mlflow.models.get_model_info(uri).metadata

def working_shape(height, width, resize):
    if resize["by"] == "exact":
        return tuple(resize["to"])
    side = {"shorter_side": min(height, width), "longer_side": max(height, width)}.get(resize["by"])
    scale = float(resize["to"]) / side if side else float(resize["to"])
    return max(1, round(height * scale)), max(1, round(width * scale))

results = {}
for k, path in enumerate(photos):
    photo = Image.open(path).convert("RGB")
    h, w = working_shape(photo.height, photo.width, meta["resize"])
    x = np.asarray(photo.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255
    x = (x - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())
        logits = F.interpolate(logits, size=(photo.height, photo.width), mode="bilinear", align_corners=False)
    results[f"logits{k}"] = logits[0].numpy()
np.savez(out, **results)
print(type(model).__module__)
print(json.dumps(meta))
"""


def test_the_mlflow_model_loads_in_a_clean_process_and_predicts_as_segpipe_predict_does(logged_model, served_model,
                                                                                       model_path, photos, folder):
    script = folder / "client.py"
    script.write_text(CLIENT)
    result = subprocess.run([sys.executable, str(script), logged_model.uri, str(folder / "client.npz"), *map(str, photos)],
                            env=mlflow_env(logged_model), cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("torch.fx")  # the exported program, not a segpipe class
    checkpoint = load_model_checkpoint(model_path)
    assert json.loads(result.stdout.splitlines()[1]) == {**model_metadata(checkpoint), "min_input_side": 17}  # unet: stride 16

    assert main(["predict", *map(str, photos), "--model", str(model_path), "--out", str(folder / "predicted")]) == 0
    client = np.load(folder / "client.npz")
    model = checkpoint.build_model()
    for k, (path, shape) in enumerate(zip(photos, PHOTO_SHAPES)):
        logits = torch.from_numpy(client[f"logits{k}"])
        assert logits.shape == (2, *shape)
        expected = reference_logits(model, np.asarray(Image.open(path).convert("RGB")), checkpoint.data)
        assert (logits - expected).abs().max() <= tolerance(expected.numpy())
        mask = read_mask(folder / "predicted" / f"{path.stem}_mask.png")
        assert_same_mask(mask, logits)
        assert (mask == logits.argmax(dim=0).numpy()).mean() > 1 - TIE


def test_one_request_to_mlflow_models_serve(served_model, model_path, photos):
    url, process, log = served_model
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                assert response.status == 200
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, f"mlflow models serve did not start:\n" \
                                                                            f"{log.read_text()[-3000:]}"
            time.sleep(0.5)
    checkpoint = load_model_checkpoint(model_path)
    batch = photo_batch(photos[1], checkpoint.data)  # 85x64: not the 64x64 the model was logged with
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": batch.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        logits = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    with torch.no_grad():
        expected = checkpoint.build_model()(torch.from_numpy(batch))
    assert logits.shape == (1, 2, 85, 64)
    assert np.abs(logits - expected.numpy()).max() <= tolerance(expected.numpy())
    assert_same_mask(logits[0].argmax(axis=0), expected[0])
