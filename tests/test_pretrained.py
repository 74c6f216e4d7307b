"""torchvision's models behind the registry, and model.weights: named torchvision weights
through torchvision's own loader and cache, local state dicts, and clear errors offline.
No test downloads anything: the weights files are ones the tests save themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch.nn import functional as F

from segpipe.errors import SegpipeError
from segpipe.models import ModelSpec, apply_weights, create_model
from segpipe.models.torchvision_models import NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_torchvision_model_trains_at_a_non_square_size_with_any_class_count(name):
    torch.manual_seed(0)
    model = create_model(ModelSpec(name, num_classes=5, pooling="max", base_channels=4))
    images = torch.randn(2, 3, 40, 56)
    logits = model(images)
    assert logits.shape == (2, 5, 40, 56)
    F.cross_entropy(logits, torch.randint(0, 5, (2, 40, 56))).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def state_of(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_local_whole_model_state_dict_loads_and_a_head_for_other_classes_starts_fresh(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    torch.save(source.state_dict(), tmp_path / "lraspp.pth")
    model = create_model(ModelSpec("lraspp_mobilenet_v3_large", 2, "max", 8))
    loaded = apply_weights(model, str(tmp_path / "lraspp.pth"))
    ours = model.state_dict()
    assert torch.equal(ours["net.backbone.0.0.weight"], source.state_dict()["backbone.0.0.weight"])
    assert ours["net.classifier.low_classifier.weight"].shape[0] == 2  # the 21-class head did not fit: left at random
    assert "tensors from" in loaded.description and "left at random" in loaded.description
    assert loaded.mean == [0.485, 0.456, 0.406]


def test_a_local_classification_backbone_loads_into_the_backbone(tmp_path):
    torch.manual_seed(2)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "backbone.pth")
    model = create_model(ModelSpec("deeplabv3_mobilenet_v3_large", 3, "max", 8))
    head_before = state_of(model.net.classifier)
    loaded = apply_weights(model, str(tmp_path / "backbone.pth"))
    assert torch.equal(model.net.backbone.state_dict()["0.0.weight"], classifier.state_dict()["features.0.0.weight"])
    assert all(torch.equal(v, model.net.classifier.state_dict()[k]) for k, v in head_before.items())
    assert loaded.description.startswith("backbone weights from")


def test_a_segpipe_checkpoint_or_own_state_dict_fine_tunes_an_own_model(tmp_path):
    torch.manual_seed(3)
    trained = create_model(ModelSpec("unet", 4, "max", 4))
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "unet.pt")
    model = create_model(ModelSpec("unet", 4, "max", 4))
    loaded = apply_weights(model, str(tmp_path / "unet.pt"))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    assert loaded.mean is None  # own models keep the dataset's normalisation


def test_named_weights_load_through_torchvision_from_torch_home(tmp_path, monkeypatch):
    # The file torchvision would download, saved by this test where torchvision's cache keeps it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch/hub/checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(4)
    backbone = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(backbone.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    model = create_model(ModelSpec("lraspp_mobilenet_v3_large", 2, "max", 8))
    loaded = apply_weights(model, "MobileNet_V3_Large_Weights.IMAGENET1K_V1")
    assert loaded.description == "backbone weights MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    assert torch.equal(model.net.backbone.state_dict()["0.0.weight"], backbone.state_dict()["features.0.0.weight"])


def _no_network(url, *args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("no network (test)")


def test_missing_named_weights_offline_name_the_option_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    model = create_model(ModelSpec("lraspp_mobilenet_v3_large", 2, "max", 8))
    with pytest.raises(SegpipeError, match=r"model.weights: MobileNet_V3_Large_Weights.IMAGENET1K_V1 is not in torchvision's "
                                           r"cache \(.*empty/hub/checkpoints/mobilenet_v3_large-8738ca79.pth\) and could not "
                                           r"be downloaded .*set model.weights to a local file or none"):
        apply_weights(model, "MobileNet_V3_Large_Weights.IMAGENET1K_V1")


@pytest.mark.parametrize("name, setting, message", [
    ("unet", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", r"is torchvision's; it applies to torchvision models"),
    ("lraspp_mobilenet_v3_large", "ResNet50_Weights.IMAGENET1K_V2", r"is for another architecture; lraspp_mobilenet_v3_large "
                                                                    r"takes MobileNet_V3_Large_Weights"),
    ("lraspp_mobilenet_v3_large", "Imagenet", r"'Imagenet' is no torchvision weights name"),
    ("unet", "missing/file.pt", r"model.weights: missing/file.pt not found"),
])
def test_weights_that_do_not_fit_are_refused_with_the_fix(name, setting, message):
    with pytest.raises(SegpipeError, match=message):
        apply_weights(create_model(ModelSpec(name, 2, "max", 4)), setting)


def test_weights_of_another_architecture_from_a_file_are_refused(tmp_path):
    torch.save(create_model(ModelSpec("fcn", 2, "max", 4)).state_dict(), tmp_path / "fcn.pt")
    with pytest.raises(SegpipeError, match=r"fcn.pt matches only \d+ of the model's \d+ tensors"):
        apply_weights(create_model(ModelSpec("unet", 2, "max", 4)), str(tmp_path / "fcn.pt"))
