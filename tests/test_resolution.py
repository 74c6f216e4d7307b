"""Real photographs: images keep their aspect ratio at the working resolution, train on
random crops that keep image and mask aligned, are scored against the original masks at
their native size, and datasets laid out one folder per split import as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.config import parse_params
from segpipe.data.batches import Batches
from segpipe.data.processed import ProcessedSplit
from segpipe.data.resolution import Resize
from segpipe.data.sources import import_dataset
from segpipe.device import runtime_for
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.scoring import score_test

CPU = runtime_for("cpu", False, False)


@pytest.mark.parametrize("by, to, shape", [
    ("shorter_side", 96, (96, 128)), ("longer_side", 96, (72, 96)), ("factor", 0.25, (90, 120)),
    ("exact", [64, 80], (64, 80)),
])
def test_the_working_resolution_keeps_the_aspect_ratio_unless_told_otherwise(by, to, shape):
    assert Resize(by, to).shape_for(360, 480) == shape


def labelled_split(shapes: list[tuple[int, int]], seed: int = 0) -> ProcessedSplit:
    """Images whose red channel encodes the label (label * 60), so alignment is visible."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for h, w in shapes:
        mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        mask[0, :] = 255  # an ignored row
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = np.where(mask == 255, 250, mask * 60)
        images.append(image), masks.append(mask)
    return ProcessedSplit.from_arrays("train", images, masks, [str(i) for i in range(len(shapes))])


def test_non_square_crops_keep_image_and_mask_aligned_and_pad_with_ignore():
    split = labelled_split([(20, 30), (24, 18), (10, 12), (30, 40)])
    batches = Batches(split, 4, CPU, [0.0] * 3, [1.0] * 3, crop=(16, 24), ignore_index=255)
    seen_padding = False
    for epoch in range(3):
        for images, masks, _ in batches.iterate(torch.Generator().manual_seed(epoch)):
            assert images.shape == (4, 3, 16, 24) and masks.shape == (4, 16, 24)
            red = (images[:, 0] * 255).round().long()
            labelled = masks != 255
            assert torch.equal(red[labelled], masks[labelled] * 60)  # every labelled pixel's image is its own
            padded = (red == 0) & (images.abs().sum(dim=1) == 0) & ~labelled
            seen_padding |= bool(padded.any())
    assert seen_padding  # the 10x12 image is smaller than the crop: its padding is ignored, never background


def test_whole_images_of_several_shapes_need_a_crop_to_train():
    from segpipe.errors import SegpipeError

    batches = Batches(labelled_split([(20, 30), (24, 18)]), 2, CPU, [0.0] * 3, [1.0] * 3)
    with pytest.raises(SegpipeError, match=r"differ in shape at the working resolution \(20x30, 24x18\): set train.crop"):
        batches.check_trainable()
    # Evaluation batches whole images, one shape at a time.
    assert sorted(tuple(b.images.shape[-2:]) for b in batches.iterate()) == [(20, 30), (24, 18)]


class RedIsClassOne(torch.nn.Module):
    """Class 1's logit is the (normalised) red channel, class 0's is zero."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


# resident: the split as tensors on the device, as a GPU holds one that fits (here on the CPU).
@pytest.mark.parametrize("resident", [False, True])
def test_native_resolution_scoring_matches_a_hand_computed_confusion_matrix(resident):
    # Working resolution 2x3; the original is 4x6. The class-1 logit is +1 on the top row, -1 below.
    working = np.zeros((2, 3, 3), np.uint8)
    working[0, :, 0] = 255
    # Bilinear upsampling of rows (+1, -1) to 4 rows gives +1, +0.5, -0.5, -1: predicted 1, 1, 0, 0.
    native = np.array([[1, 1, 1, 1, 0, 0],
                       [1, 1, 255, 255, 1, 1],
                       [0, 0, 0, 1, 1, 0],
                       [0, 255, 0, 0, 0, 1]], np.uint8)
    split = ProcessedSplit.from_arrays("test", [working], [np.zeros((2, 3), np.uint8)], ["a"], native_masks=[native])
    batches = Batches(split, 1, CPU, [0.0] * 3, [1.0] * 3, resident=resident)  # red comes in as 1.0 and 0.0
    scored = score_test(_shifted(RedIsClassOne()), batches, 2, 255, CPU)
    # Rows 0-1 predicted 1, rows 2-3 predicted 0. Truth (ignoring 255):
    #   true 1 predicted 1: row0 4 + row1 4 = 8;  true 0 predicted 1: row0 2
    #   true 0 predicted 0: row2 4 + row3 4 = 8; true 1 predicted 0: row2 2 + row3 1 = 3
    expected = np.array([[8, 2], [3, 8]])
    assert np.array_equal(scored.native.numpy(), expected)
    assert np.array_equal(scored.per_image[0], expected)
    assert scores(expected, ["bg", "fg"])["miou"] == pytest.approx(np.mean([8 / 13, 8 / 13]), abs=1e-6)


def _shifted(model: torch.nn.Module) -> torch.nn.Module:
    """Map red 0.0 -> -1 and 1.0 -> +1, so the two working rows are -1 and +1."""
    class Shift(torch.nn.Module):
        def forward(self, x):
            return model(x * 2.0 - 1.0)
    return Shift()


def write_split_folders(root, layout: dict[str, tuple[str, str]], counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, (images, masks) in layout.items():
        (root / images).mkdir(parents=True, exist_ok=True)
        (root / masks).mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / images / f"{split}_{i:03d}.png")
            Image.fromarray((rng.random((12, 16)) > 0.5).astype(np.uint8)).save(root / masks / f"{split}_{i:03d}.png")


COUNTS = {"train": 7, "val": 3, "test": 4}


def test_camvid_style_split_folders_import_with_the_official_counts(raw_params, tmp_path):
    layout = {"train": ("camvid/train", "camvid/trainannot"), "val": ("camvid/val", "camvid/valannot"),
              "test": ("camvid/test", "camvid/testannot")}
    write_split_folders(tmp_path, layout, COUNTS)
    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": None, "masks": None, "classes": ["a", "b"], "split_folders": {
        split: {"images": str(tmp_path / i), "masks": str(tmp_path / m)} for split, (i, m) in layout.items()}}
    raw = import_dataset(parse_params(raw_params), tmp_path / "raw", tmp_path / "cache")
    assert {s: sum(p.split == s for p in raw.pairs) for s in COUNTS} == COUNTS and not raw.problems


def test_images_and_masks_with_split_subfolders_import_with_the_official_counts(raw_params, tmp_path):
    write_split_folders(tmp_path, {s: (f"data/images/{s}", f"data/masks/{s}") for s in COUNTS}, COUNTS)
    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": str(tmp_path / "data/images"), "masks": str(tmp_path / "data/masks"),
                                     "classes": ["a", "b"]}
    raw = import_dataset(parse_params(raw_params), tmp_path / "raw", tmp_path / "cache")
    assert {s: sum(p.split == s for p in raw.pairs) for s in COUNTS} == COUNTS


def test_split_folders_leave_no_room_for_a_second_description(raw_params):
    from segpipe.config import SegpipeConfigError

    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": "x", "masks": "y",
                                     "split_folders": {"train": {"images": "a", "masks": "b"}}}
    with pytest.raises(SegpipeConfigError, match=r"split_folders names every split's folders: leave images, masks"):
        parse_params(raw_params)


@pytest.mark.parametrize("crop", [None, (8, 12)])
def test_a_split_kept_on_the_device_gives_exactly_the_batches_of_one_read_from_the_host(crop):
    shapes = [(16, 20)] * 6 if crop is None else [(20, 30), (24, 18), (10, 12), (16, 20), (12, 14), (18, 18)]
    split = labelled_split(shapes, seed=3)
    host = Batches(split, 3, CPU, [0.5] * 3, [0.25] * 3, crop=crop, resident=False)
    device = Batches(split, 3, CPU, [0.5] * 3, [0.25] * 3, crop=crop, resident=True)
    assert isinstance(device.split.pixels, torch.Tensor) and not isinstance(host.split.pixels, torch.Tensor)
    for generator in (torch.Generator().manual_seed(1), None):
        other = None if generator is None else torch.Generator().manual_seed(1)
        for a, b in zip(host.iterate(generator), device.iterate(other), strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
