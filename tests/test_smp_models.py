"""segmentation_models_pytorch's architectures on smp's and timm's encoders, behind segpipe's registry:
any input size (padded to the encoder's stride and cropped back inside the model), training steps,
checkpoints, encoder weights from a file the test saves and from the Hugging Face cache smp's own
loader reads (filled by the test: no download), ONNX export with parity, the MLflow pt2 program,
`segpipe predict` in windows, and the whole pipeline from params with a weights file under DVC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from PIL import Image
from torch.nn import functional as F

from segpipe.cli import main
from segpipe.config import ModelParams
from segpipe.data.processed import DatasetInfo
from segpipe.errors import SegpipeError
from segpipe.hashing import file_sha256
from segpipe.models import MODELS, ModelSpec, apply_weights, create_model, describe, spec_for
from segpipe.models.checkpoint import ModelCheckpoint, load_model_checkpoint, model_metadata
from segpipe.models.smp_models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD
from segpipe.serving.export import tolerance
from tests.pipeline_project import create_project, dvc, git_commit, tiny_params
from tests.test_predict import synthetic_photo

# The three combinations every path is tested on: a CNN encoder under a U-Net, a light mobile
# encoder under an FPN, and a transformer encoder under its own decoder.
COMBINATIONS = [("smp_unet", "resnet34"), ("smp_fpn", "mobilenet_v2"), ("smp_segformer", "mit_b0")]
INFO = DatasetInfo("folder", ["background", "horse", "rider"], 255, {"by": "shorter_side", "to": 48},
                   [0.45, 0.43, 0.38], [0.27, 0.26, 0.28])


def smp(name: str, encoder: str, classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(ModelSpec(name, classes, "max", 8, encoder=encoder))


def test_every_smp_architecture_is_in_the_registry():
    assert {"smp_unet", "smp_unetplusplus", "smp_fpn", "smp_pspnet", "smp_deeplabv3", "smp_deeplabv3plus", "smp_linknet",
            "smp_manet", "smp_pan", "smp_upernet", "smp_segformer", "smp_dpt"} == set(ARCHITECTURES) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_architecture_takes_a_size_no_stride_divides_and_trains(name):
    model = smp(name, "tu-vit_tiny_patch16_224" if name == "smp_dpt" else "resnet18")  # DPT takes ViT encoders only
    logits = model(torch.randn(2, 3, 30, 44))
    assert logits.shape == (2, 3, 30, 44)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 30, 44))).backward()
    # Every decoder and head tensor learns (encoder stages an architecture leaves out, such as PSPNet's last
    # ones at its default depth 3 or a ViT's classifier norm, get no gradient).
    for part in (model.net.decoder, model.net.segmentation_head):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.encoder.parameters())


@pytest.mark.parametrize("name, encoder", COMBINATIONS)
def test_any_input_size_gives_logits_of_that_size_and_the_model_learns(name, encoder):
    model = smp(name, encoder)
    images = torch.randn(2, 3, 48, 65)  # neither side divisible by 32
    if name != "smp_unet":  # smp itself refuses such sizes (its Unet interpolates instead): segpipe pads
        with pytest.raises(RuntimeError, match="divisible by 32"):
            type(model.net).forward(_refusing(model.net), images)
    masks = images.argmax(dim=1)  # a per-pixel function of the image: learnable in a few steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(5):
        logits = model(images)
        assert logits.shape == (2, 3, 48, 65)
        loss = F.cross_entropy(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # downhill on a fixed batch (Segformer's from-scratch start is the slowest)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 50)).shape == (1, 3, 37, 50)
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)  # divisible: nothing padded


def _refusing(net):
    net.requires_divisible_input_shape = True  # what smp does without segpipe's padding
    return net


@pytest.mark.parametrize("setting, message", [
    ("smp_unett", r"model.name: unknown model 'smp_unett'; valid choices: .*smp_unet, smp_unetplusplus"),
])
def test_a_wrong_architecture_lists_the_valid_ones(setting, message):
    with pytest.raises(SegpipeError, match=message):
        MODELS.check(setting)


@pytest.mark.parametrize("encoder, message", [
    ("resnet35", r"model.encoder: unknown encoder 'resnet35'; nearest: [^.]*resnet34, .*any timm model as tu-<name>"),
    ("tu-resnet_18", r"model.encoder: 'tu-resnet_18' is no timm model; nearest: tu-resnet18"),
    (None, r"model.encoder: smp_fpn needs an encoder; set model.encoder to one of smp's \(resnet34"),
])
def test_a_wrong_encoder_names_the_nearest_valid_ones(encoder, message):
    with pytest.raises(SegpipeError, match=message):
        create_model(ModelSpec("smp_fpn", 2, "max", 8, encoder=encoder))


def test_an_encoder_set_for_a_model_without_one_stops_the_run():
    params = ModelParams(name="unet", pooling="max", base_channels=8, weights="none", encoder="resnet34")
    with pytest.raises(SegpipeError, match=r"model.encoder: 'resnet34' chooses the encoder of the smp_\* models; unet has "
                                           r"none. Set model.encoder: null"):
        spec_for(params, 2)
    smp_params = ModelParams(name="smp_unet", pooling="max", base_channels=8, weights="none", encoder="resnet18")
    assert spec_for(smp_params, 2) == ModelSpec("smp_unet", 2, "max", 8, encoder="resnet18")


def test_an_architecture_that_cannot_take_the_encoder_says_so():
    with pytest.raises(SegpipeError, match=r"model.encoder: smp's DPT cannot be built on the encoder 'resnet18' "
                                           r"\(Only Timm encoders are supported for DPT"):
        create_model(ModelSpec("smp_dpt", 2, "max", 8, encoder="resnet18"))


def test_a_title_names_an_smp_models_encoder_and_the_pooling_of_the_own_models_only():
    assert describe(ModelSpec("smp_fpn", 3, "max", 8, encoder="mobilenet_v2")) == "smp_fpn (mobilenet_v2 encoder)"
    assert describe(ModelSpec("unet", 3, "avg", 8)) == "unet (avg pooling)"
    assert describe(ModelSpec("deeplabv3_resnet50", 3, "max", 8)) == "deeplabv3_resnet50"  # model.pooling: not its knob


def checkpoint_of(model, name: str, encoder: str, info: DatasetInfo = INFO, input_shape=(48, 48)) -> ModelCheckpoint:
    return ModelCheckpoint(ModelSpec(name, info.num_classes, "max", 8, encoder=encoder),
                           {k: v.clone() for k, v in model.state_dict().items()}, info, input_shape, 1, {"miou": 0.5})


@pytest.mark.parametrize("name, encoder", COMBINATIONS)
def test_a_checkpoint_rebuilds_the_same_model_and_carries_the_encoder(name, encoder, tmp_path):
    model = smp(name, encoder, seed=1).eval()
    checkpoint_of(model, name, encoder).save(tmp_path / "model.pt")
    loaded = load_model_checkpoint(tmp_path / "model.pt")
    assert loaded.spec.encoder == encoder
    assert model_metadata(loaded)["encoder"] == encoder and model_metadata(loaded)["model"] == name
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        assert torch.equal(loaded.build_model()(x), model(x))


def test_a_format_2_checkpoint_written_before_encoders_existed_still_loads(tmp_path):
    from tests.test_predict import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "old.pt", [synthetic_photo(64, 64, 0)])
    raw = torch.load(path, weights_only=True)
    del raw["spec"]["encoder"]  # what format 2 held until now
    torch.save(raw, path)
    loaded = load_model_checkpoint(path)
    assert loaded.spec.encoder is None and "encoder" not in model_metadata(loaded)
    loaded.build_model()


# --- weights ----------------------------------------------------------------------------


def test_encoder_weights_from_a_file_load_into_the_encoder_only_and_bring_imagenet_normalisation(tmp_path):
    source = smp("smp_unet", "resnet18", seed=2)
    torch.save(source.net.encoder.state_dict(), tmp_path / "resnet18.pth")
    model = smp("smp_unet", "resnet18", seed=3)
    decoder_before = {k: v.clone() for k, v in model.net.decoder.state_dict().items()}
    loaded = apply_weights(model, str(tmp_path / "resnet18.pth"))
    assert all(torch.equal(v, source.net.encoder.state_dict()[k]) for k, v in model.net.encoder.state_dict().items())
    assert all(torch.equal(v, model.net.decoder.state_dict()[k]) for k, v in decoder_before.items())
    assert loaded.description == f"resnet18 encoder weights from {tmp_path / 'resnet18.pth'}"
    assert (loaded.mean, loaded.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert loaded.sha256 == file_sha256(tmp_path / "resnet18.pth")
    assert loaded.tags("w.pth") == {"weights": "w.pth", "weights_sha256": loaded.sha256}


def test_a_torchvision_classifier_file_loads_into_smps_resnet_encoder(tmp_path):
    import torchvision

    torch.manual_seed(4)
    classifier = torchvision.models.resnet18(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "resnet18-classifier.pth")  # fc.* too: left out
    model = smp("smp_fpn", "resnet18")
    apply_weights(model, str(tmp_path / "resnet18-classifier.pth"))
    assert torch.equal(model.net.encoder.state_dict()["conv1.weight"], classifier.state_dict()["conv1.weight"])


def test_a_file_that_records_its_normalisation_brings_that_one(tmp_path):
    trained = smp("smp_segformer", "mit_b0", seed=5)
    checkpoint_of(trained, "smp_segformer", "mit_b0").save(tmp_path / "segformer.pt")  # a segpipe checkpoint
    model = smp("smp_segformer", "mit_b0", seed=6)
    loaded = apply_weights(model, str(tmp_path / "segformer.pt"))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    assert (loaded.mean, loaded.std) == (INFO.mean, INFO.std)
    torch.save({"state_dict": trained.net.encoder.state_dict(), "mean": [0.5] * 3, "std": [0.25] * 3},
               tmp_path / "encoder.pt")
    assert apply_weights(smp("smp_segformer", "mit_b0"), str(tmp_path / "encoder.pt")).mean == [0.5] * 3


def test_a_timm_encoder_takes_timms_normalisation_for_its_weights(tmp_path):
    import timm

    source = smp("smp_unet", "tu-mobilenetv3_small_100", seed=7)
    torch.save(source.net.encoder.state_dict(), tmp_path / "timm.pth")
    loaded = apply_weights(smp("smp_unet", "tu-mobilenetv3_small_100"), str(tmp_path / "timm.pth"))
    config = timm.models.get_pretrained_cfg("mobilenetv3_small_100")
    assert (loaded.mean, loaded.std) == (list(config.mean), list(config.std))


def test_weights_of_another_encoder_are_refused_naming_the_file(tmp_path):
    torch.save(smp("smp_unet", "resnet18").net.encoder.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(SegpipeError, match=r"resnet18.pth (has other shapes for|lacks).*is it the weights of the encoder "
                                           r"resnet50\?|resnet18.pth matches only"):
        apply_weights(smp("smp_unet", "resnet50"), str(tmp_path / "resnet18.pth"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own, read offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_named_encoder_weights_load_through_smps_own_loader_from_the_hub_cache(hub_cache):
    # The two files smp downloads for resnet18's imagenet weights, saved where huggingface_hub caches them.
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = hub_cache / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    source = smp("smp_unet", "resnet18", seed=8)
    save_file({k: v.contiguous() for k, v in source.net.encoder.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}))
    model = smp("smp_unet", "resnet18", seed=9)
    loaded = apply_weights(model, "imagenet")
    assert all(torch.equal(v, source.net.encoder.state_dict()[k]) for k, v in model.net.encoder.state_dict().items())
    assert (loaded.mean, loaded.std) == ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])  # the weights' own, from their config
    assert loaded.sha256 == file_sha256(snapshot / "model.safetensors")
    assert loaded.description.startswith("encoder weights imagenet of resnet18")


def test_missing_named_encoder_weights_offline_name_the_cache_and_the_file(hub_cache):
    with pytest.raises(SegpipeError, match=r"model.weights: imagenet weights of the encoder resnet34 are not in the Hugging "
                                           r"Face cache \(.*hf/models--smp-hub--resnet34.imagenet\) and could not be "
                                           r"downloaded .*download model.safetensors of https://huggingface.co/smp-hub/"
                                           r"resnet34.imagenet at revision .*or set model.weights to a local .pt/.pth"):
        apply_weights(smp("smp_unet", "resnet34"), "imagenet")


@pytest.mark.parametrize("setting, message", [
    ("swsl", r"model.weights: 'swsl' is no pretrained weights of the encoder resnet34; it has imagenet"),
    ("MobileNet_V3_Large_Weights.IMAGENET1K_V1", r"is no pretrained weights of the encoder resnet34"),
])
def test_named_weights_the_encoder_lacks_are_refused_with_its_choices(setting, message):
    with pytest.raises(SegpipeError, match=message):
        apply_weights(smp("smp_unet", "resnet34"), setting)


# --- out of segpipe: ONNX, the MLflow program, predict ------------------------------------------


@pytest.mark.parametrize("name, encoder", [("smp_unet", "resnet34"), ("smp_segformer", "mit_b0")])
def test_onnx_export_matches_pytorch_at_sizes_no_stride_divides(name, encoder, tmp_path, capsys):
    model = smp(name, encoder, seed=10).eval()
    checkpoint_of(model, name, encoder).save(tmp_path / "model.pt")
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "model.onnx")]) == 0
    proto = onnx.load(tmp_path / "model.onnx")
    assert json.loads({p.key: p.value for p in proto.metadata_props}["encoder"]) == encoder
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 45, 70), (2, 3, 97, 33)]:
        batch = torch.randn(*shape)
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(["logits"], {"images": batch.numpy()})[0]
        assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
        assert np.abs(got - expected).max() <= tolerance(expected)


def test_an_architecture_torch_onnx_cannot_take_is_a_clear_error_that_writes_nothing(tmp_path, capsys):
    # smp's FPN doubles its maps with float scale factors; torch 2.14's exporter fails on its sizes for a
    # dynamic height and width (the MLflow program, exported by MLflow, works: the next test).
    checkpoint_of(smp("smp_fpn", "mobilenet_v2").eval(), "smp_fpn", "mobilenet_v2").save(tmp_path / "model.pt")
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert "error: torch.onnx could not export the Smp_FPN model: Failed to export the model with torch.export." in err
    assert "(<class 'AssertionError'>: " in err  # torch.export's own reason, not only the exporter's first line
    assert "\x1b[" not in err and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("name, encoder", COMBINATIONS)
def test_the_mlflow_program_takes_sizes_no_stride_divides(name, encoder, tmp_path, monkeypatch):
    import mlflow

    from segpipe.tracking.runs import TrainingRun

    model = smp(name, encoder, seed=11).eval()
    checkpoint = checkpoint_of(model, name, encoder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    run = TrainingRun("segpipe-smp-test", {"model.name": name}, {}, required=True, run_name=f"tiny-{name}")
    run.log_model(checkpoint.build_model(), torch.randn(2, 3, 48, 48).numpy(), None, metadata=model_metadata(checkpoint))
    run.finish()
    program = mlflow.pytorch.load_model(f"runs:/{run.run_id}/model")
    assert type(program).__module__.startswith("torch.fx")  # the exported program, not a segpipe class
    batch = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        expected = model(batch)
        got = program(batch)
    assert got.shape == (2, 3, 45, 70)
    assert (got - expected).abs().max() <= tolerance(expected.numpy())


def test_predict_in_windows_gives_a_mask_at_the_photos_own_size(tmp_path, capsys):
    model = smp("smp_fpn", "mobilenet_v2", seed=12).eval()
    info = DatasetInfo("folder", ["background", "horse", "rider"], 255, {"by": "shorter_side", "to": 100},
                       INFO.mean, INFO.std)
    checkpoint_of(model, "smp_fpn", "mobilenet_v2", info, input_shape=(40, 40)).save(tmp_path / "model.pt")
    photo = tmp_path / "wide.png"
    Image.fromarray(synthetic_photo(150, 333, seed=3)).save(photo)  # 100x222 at the working resolution: windows of 40x40
    assert main(["predict", str(photo), "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    (entry,) = manifest["predicted"]
    assert entry["windows"] > 1 and entry["size"] == [150, 333]
    with Image.open(tmp_path / "out/wide_mask.png") as mask:
        assert mask.size == (333, 150)
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}


@pytest.mark.parametrize("name, encoder", COMBINATIONS)
def test_train_compile_steps_the_compiled_smp_model_like_the_eager_one(name, encoder):
    """train.compile's model gives the eager model's logits and gradients, at a size no stride divides."""
    from types import SimpleNamespace

    from segpipe.device import runtime_for
    from segpipe.distributed import Distributed
    from segpipe.training.setup import prepare_for_steps

    model = smp(name, encoder, classes=2, seed=13).eval()  # no dropout or drop-path draws between the two
    stepping = prepare_for_steps(model, SimpleNamespace(compile=True, sync_batchnorm=False), runtime_for("cpu", False, False),
                                 Distributed(rank=0, world=1, local_rank=0))
    x = torch.randn(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    gradients = []
    for forward in (model, stepping):
        model.zero_grad()
        logits = forward(x)
        assert logits.shape == (2, 2, 40, 52)
        logits.square().mean().backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    eager, compiled = gradients
    assert len(eager) == len(compiled) == sum(1 for p in model.parameters() if p.requires_grad)
    # Each gradient within 1e-4 of its largest element: the compiled kernels sum in another order (seen: 2e-6).
    assert all((a - b).abs().max() <= 1e-4 * a.abs().max() for a, b in zip(eager, compiled))


# --- the pipeline from params ------------------------------------------------------------------


@pytest.mark.e2e
def test_the_pipeline_runs_an_smp_model_from_params_with_a_dvc_tracked_weights_file_under_two_processes(tmp_path):
    from mlflow import MlflowClient

    params = tiny_params()
    params["data"]["shapes"]["image_size"] = 45  # native 45x45, working 30x30: no side divisible by 32
    params["preprocess"]["resize"] = {"by": "shorter_side", "to": 30}
    root = create_project(tmp_path / "project", params)
    # The weights file under DVC, and a dependency of train (README: "Pretrained weights as a DVC-tracked file").
    (root / "weights").mkdir()
    torch.save(smp("smp_unet", "resnet18", seed=14).net.encoder.state_dict(), root / "weights/resnet18.pth")
    dvc("add", "weights/resnet18.pth", cwd=root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())
    stages["stages"]["train"]["deps"].append("weights/resnet18.pth")
    (root / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    git_commit(root, "weights under DVC")

    result = dvc("exp", "run", "-S", "model.name=smp_unet", "-S", "model.encoder=resnet18", "-S",
                 "model.weights=weights/resnet18.pth", "-S", "train.nproc=2", cwd=root)
    assert "starting from resnet18 encoder weights from weights/resnet18.pth" in result.stdout
    assert "x 2 processes" in result.stdout
    checkpoint = load_model_checkpoint(root / "models/model.pt")
    assert (checkpoint.spec.name, checkpoint.spec.encoder) == ("smp_unet", "resnet18")
    assert (checkpoint.data.mean, checkpoint.data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert 0 <= evaluation["miou"] <= 1 and "working_resolution" in json.dumps(evaluation)
    assert (root / "reports/report.html").stat().st_size > 10_000
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (only,) = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id])
    assert only.data.tags["weights_sha256"] == file_sha256(root / "weights/resnet18.pth")
    assert only.data.tags["weights"] == "weights/resnet18.pth" and only.data.params["model.encoder"] == "resnet18"
    assert "train" not in dvc("status", cwd=root).stdout

    # Other bytes in the weights file: train (and what follows) is stale.
    torch.save(smp("smp_unet", "resnet18", seed=15).net.encoder.state_dict(), root / "weights/resnet18.pth")
    status = dvc("status", cwd=root).stdout
    assert "train:" in status and "modified:           weights/resnet18.pth" in status
