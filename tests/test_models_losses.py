from dataclasses import asdict

import pytest
import torch
from torch.nn import functional as F

from segpipe.errors import SegpipeError
from segpipe.models import MODELS, ModelSpec, create_model
from segpipe.training.losses import LOSSES, create_loss, median_frequency_weights, resolve_class_weights

IGNORE = 255


# Each pooling for the models it shapes (cnn, fcn, unet); the others ignore model.pooling, so one run each.
# The smp models need an encoder: tests/test_smp_models.py runs each of them.
@pytest.mark.parametrize("name,pooling", [(name, pooling) for name in sorted(MODELS) if not MODELS[name].uses_encoder
                                          for pooling in (("max", "avg") if MODELS[name].own_knobs else ("max",))])
@pytest.mark.parametrize("size", [(32, 32), (30, 44)])
def test_every_model_maps_images_to_logits_of_the_same_size_and_trains(name, pooling, size):
    torch.manual_seed(0)
    model = create_model(ModelSpec(name, num_classes=3, pooling=pooling, base_channels=4))
    images = torch.randn(2, 3, *size)
    logits = model(images)
    assert logits.shape == (2, 3, *size)
    loss = F.cross_entropy(logits, torch.randint(0, 3, (2, *size)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_pooling_choice_builds_the_named_layer():
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in create_model(ModelSpec("unet", 2, "avg", 4)).modules())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in create_model(ModelSpec("unet", 2, "avg", 4)).modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in create_model(ModelSpec("fcn", 2, "max", 4)).modules())


def test_a_spec_rebuilds_the_same_architecture():
    spec = ModelSpec("fcn", 5, "avg", 6)
    model = create_model(spec)
    create_model(ModelSpec(**asdict(spec))).load_state_dict(model.state_dict())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_differentiable_and_ignores_the_ignore_label(name):
    torch.manual_seed(0)
    loss_fn = create_loss(name, num_classes=3, ignore_index=IGNORE, class_weights=None)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = IGNORE
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    # Ignored pixels get no gradient, and changing their logits changes nothing.
    assert logits.grad[:, :, :2].abs().max() == 0
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 8) * 10
    assert float(loss_fn(changed, target)) == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_near_zero_for_a_confident_correct_prediction(name):
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(create_loss(name, 3, IGNORE, None)(logits, target)) < 1e-3


def test_mae_and_mse_by_hand():
    # One pixel, two classes: softmax of (0, 0) is (0.5, 0.5); target class 1.
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    assert float(create_loss("mae", 2, IGNORE, None)(logits, target)) == pytest.approx(0.5)
    assert float(create_loss("mse", 2, IGNORE, None)(logits, target)) == pytest.approx(0.25)


def test_dice_by_hand():
    # Two pixels, perfect hard one-hot probabilities except one pixel split 50/50.
    logits = torch.tensor([[[[100.0, 0.0]], [[0.0, 0.0]]]])  # pixel 0: class 0; pixel 1: 50/50
    target = torch.tensor([[[0, 1]]])
    p = torch.tensor([[1.0, 0.5], [0.0, 0.5]])  # class x pixel
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    expected = 1 - dice.mean()
    assert float(create_loss("dice", 2, IGNORE, None)(logits, target)) == pytest.approx(float(expected), abs=1e-5)


def test_class_weights_change_cross_entropy_like_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    weights = [0.2, 1.0, 3.0]
    ours = create_loss("cross_entropy", 3, IGNORE, weights)(logits, target)
    assert float(ours) == pytest.approx(float(F.cross_entropy(logits, target, weight=torch.tensor(weights))), abs=1e-6)


def test_class_weights_of_the_wrong_length_name_the_key():
    with pytest.raises(SegpipeError, match=r"loss.class_weights has 2 values but the dataset has 3 classes"):
        resolve_class_weights([1.0, 2.0], 3, {})


def test_median_frequency_weights_by_hand():
    # Three classes. Class pixels in training: 600, 300, 100. Labelled pixels of the images
    # holding each class: background is in all 10 images of 100 px (1000), the second class
    # in 5 of them (500), the third in 2 (200). Frequencies: 0.6, 0.6, 0.5; median 0.6.
    summary = {"classes": ["bg", "a", "b"], "class_pixels": {"train": {"bg": 600, "a": 300, "b": 100}},
               "train_presence_pixels": {"bg": 1000, "a": 500, "b": 200}}
    assert resolve_class_weights("median_frequency", 3, summary) == pytest.approx([1.0, 1.0, 1.2])
    # An even number of classes takes the mean of the middle two.
    assert median_frequency_weights([10, 20, 30, 40], [100, 100, 100, 100]) == pytest.approx([2.5, 1.25, 0.25 / 0.3, 0.625])
    assert resolve_class_weights(None, 3, summary) is None and resolve_class_weights([1, 2, 3], 3, summary) == [1, 2, 3]
