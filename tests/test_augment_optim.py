import math

import numpy as np
import pytest
import torch

from segpipe.config import AugmentParams
from segpipe.data.normalise import to_float_images
from segpipe.training.augment import augment_batch
from segpipe.training.optim import lr_factor

IGNORE = 255


def params(**overrides):
    base = dict(scale_min=1.0, scale_max=1.0, random_crop=False, hflip=0.0, vflip=0.0)
    return AugmentParams(**(base | overrides))


def batch(n=3, size=8):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    masks = torch.randint(0, 4, (n, size, size), generator=g)
    return images, masks


def test_identity_params_leave_the_batch_alone():
    images, masks = batch()
    out_images, out_masks = augment_batch(images, masks, params(), IGNORE, torch.Generator().manual_seed(0))
    assert out_images is images and out_masks is masks


@pytest.mark.parametrize("flip, dim", [("hflip", -1), ("vflip", -2)])
def test_certain_flips_mirror_images_and_masks_exactly(flip, dim):
    images, masks = batch()
    out_images, out_masks = augment_batch(images, masks, params(**{flip: 1.0}), IGNORE, torch.Generator().manual_seed(0))
    assert torch.allclose(out_images, images.flip(dim), atol=1e-5)
    assert torch.equal(out_masks, masks.flip(dim))


def test_zooming_out_pads_masks_with_ignore_not_background():
    images, masks = batch(size=16)
    _, out_masks = augment_batch(images, masks, params(scale_min=0.5, scale_max=0.5), IGNORE, torch.Generator().manual_seed(0))
    # A centred half-size copy: a 4-pixel ignore border, the original labels inside.
    assert (out_masks[:, :4] == IGNORE).all() and (out_masks[:, :, -4:] == IGNORE).all()
    inside = out_masks[:, 4:12, 4:12]
    assert (inside != IGNORE).all()
    # Every label inside is the label of a source pixel within one pixel of where it maps.
    for i in range(8):
        for j in range(8):
            window = masks[:, max(0, 2 * i - 1):2 * i + 3, max(0, 2 * j - 1):2 * j + 3].reshape(3, -1)
            assert ((window == inside[:, i, j, None]).any(dim=1)).all()


def test_random_scale_and_crop_keep_labels_valid_and_vary_per_sample():
    images, masks = batch(n=8, size=16)
    masks[:, :, :3] = IGNORE
    p = params(scale_min=0.7, scale_max=1.4, random_crop=True, hflip=0.5, vflip=0.5)
    out_images, out_masks = augment_batch(images, masks, p, IGNORE, torch.Generator().manual_seed(0))
    assert out_images.shape == images.shape and out_masks.shape == masks.shape and out_masks.dtype == masks.dtype
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, 3, IGNORE}
    assert not torch.equal(out_masks[0], out_masks[1])
    again = augment_batch(images, masks, p, IGNORE, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], out_masks)


def test_to_float_images_normalises_per_channel():
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # (1,1,1,3)
    out = to_float_images(images, mean=[0.0, 0.5, 0.2], std=[1.0, 0.5, 0.1])
    assert out.shape == (1, 3, 1, 1)
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_learning_rate_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, 100, 10, "poly") == pytest.approx(0.5**0.9)
    assert lr_factor(0, 100, 0, "poly") == pytest.approx(1.0)


def test_overlay_paints_classes_over_a_grey_image():
    from segpipe.reporting.overlay import PALETTE, overlay

    image = np.zeros((1, 3, 3), np.uint8)
    image[0] = [[255, 0, 0], [0, 255, 0], [10, 20, 30]]
    mask = np.array([[0, 1, 255]], np.uint8)
    out = overlay(image, mask, alpha=0.5)
    assert out[0, 0].tolist() == [76, 76, 76]                      # background: the grey of pure red
    assert out[0, 1].tolist() == np.round(255 * 0.587 * 0.5 + PALETTE[1] * 0.5).astype(int).tolist()
    assert out[0, 2].tolist() == [18, 18, 18]                      # ignore: grey only
