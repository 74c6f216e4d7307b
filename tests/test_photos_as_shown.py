"""Inputs as a new user brings them (issue 20): photos stored sideways with an EXIF
orientation tag, 255 classes, animated and WebP images in predict's folders, masks named
with a suffix, grey+alpha masks and a dataset of two pairs. Each once passed silently
or gave advice that could not help. (docs/RELIABILITY.md lists them.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segpipe.cli import main
from segpipe.config import PreprocessParams, ResizeParams, SegpipeConfigError, SplitParams, parse_params
from segpipe.data.images import image_size, read_rgb
from segpipe.data.preprocess import preprocess
from segpipe.data.processed import ProcessedSplit
from segpipe.data.sources import import_dataset
from segpipe.errors import SegpipeError
from tests.test_predict import synthetic_photo, tiny_checkpoint

ORIENTATION = 0x0112


def save_sideways(upright: np.ndarray, path, fmt: str | None = None) -> None:
    """Store `upright` as a camera does: turned 90 degrees, with EXIF Orientation 6 (viewers turn it
    90 degrees clockwise to show it)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(path, format=fmt, exif=exif)


def prep(to: int) -> PreprocessParams:
    return PreprocessParams(resize=ResizeParams(by="shorter_side", to=to), min_side=2, on_bad_sample="error",
                            on_leak="warn", split=SplitParams(seed=0, val_fraction=0.2, test_fraction=0.2), workers=1)


def folder_params(raw_params, root, **spec):
    raw_params["data"]["dataset"] = "folder"
    raw_params["data"]["folder"] |= {"images": str(root / "images"), "masks": str(root / "masks"),
                                     "classes": ["background", "object"]} | spec
    return parse_params(raw_params)


def upright_pairs(n: int, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Photos and masks as a viewer shows them; the mask marks a block in the top-left corner,
    so a turned mask or photo would not line up."""
    pairs = []
    for i in range(n):
        photo = synthetic_photo(height, width, seed=i)
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2, : width // 3 + i % 3] = 1
        pairs.append((photo, mask))
    return pairs


@pytest.mark.parametrize("height, width", [(12, 12), (12, 20)], ids=["square", "non-square"])
def test_sideways_photos_with_an_orientation_tag_are_read_as_viewers_show_them(raw_params, tmp_path, height, width):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pairs = upright_pairs(6, height, width)
    for i, (photo, mask) in enumerate(pairs):
        save_sideways(photo, tmp_path / "images" / f"p{i}.png")  # lossless, so the pixels compare exactly
        Image.fromarray(mask).save(tmp_path / "masks" / f"p{i}.png")
    assert image_size(tmp_path / "images" / "p0.png") == (width, height)  # as shown, from the header
    raw = import_dataset(folder_params(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert raw.problems == [] and len(raw.pairs) == 6
    preprocess(raw, prep(to=min(height, width)), tmp_path / "processed")
    for split in ("train", "val", "test"):
        stored = ProcessedSplit.load(tmp_path / "processed", split)
        for k, sample_id in enumerate(stored.ids):
            photo, mask = pairs[int(sample_id[1:])]
            assert np.array_equal(stored.image(k), photo) and np.array_equal(stored.mask(k), mask)


def test_a_mask_with_its_own_orientation_tag_is_turned_too(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pairs = upright_pairs(6, 10, 16)
    for i, (photo, mask) in enumerate(pairs):
        Image.fromarray(photo).save(tmp_path / "images" / f"p{i}.png")
        save_sideways(mask, tmp_path / "masks" / f"p{i}.png")
    raw = import_dataset(folder_params(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert raw.problems == []
    for pair in raw.pairs:
        assert np.array_equal(np.asarray(Image.open(raw.root / pair.mask)), pairs[int(pair.id[1:])][1])


def test_a_mismatch_that_only_a_quarter_turn_explains_says_so_not_resize(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (photo, mask) in enumerate(upright_pairs(4, 10, 16)):
        Image.fromarray(np.ascontiguousarray(np.rot90(photo))).save(tmp_path / "images" / f"p{i}.png")  # tag stripped
        Image.fromarray(mask).save(tmp_path / "masks" / f"p{i}.png")
    for resize in (None, "image_to_mask"):  # resizing would stretch the photo onto the mask: never done
        raw = import_dataset(folder_params(raw_params, tmp_path, resize=resize), tmp_path / f"raw{resize}", tmp_path / "c")
        assert raw.pairs == [] and len(raw.problems) == 4
        reason = raw.problems[0].reason
        assert "p0.png is 10x16 but" in reason and "p0.png is 16x10: they differ by a quarter turn" in reason
        assert "rotate it" in reason and "data.folder.resize" not in reason


def test_predict_writes_masks_as_viewers_show_the_photo(tmp_path):
    upright = synthetic_photo(48, 80, seed=5)
    (tmp_path / "photos").mkdir()
    save_sideways(upright, tmp_path / "photos" / "phone.jpg", "JPEG")
    shown = read_rgb(tmp_path / "photos" / "phone.jpg")
    stored = np.asarray(Image.open(tmp_path / "photos" / "phone.jpg").convert("RGB"))
    assert stored.shape == (80, 48, 3) and np.array_equal(shown, np.rot90(stored, k=-1))
    model_path = tiny_checkpoint(tmp_path / "model.pt", [shown])
    assert main(["predict", str(tmp_path / "photos"), "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert manifest["predicted"][0]["size"] == [48, 80]
    for name in ("phone_mask.png", "phone_overlay.png"):
        assert Image.open(tmp_path / "out" / name).size == (80, 48)


# --- 255 classes ------------------------------------------------------------------------

def test_255_classes_reach_every_class_and_more_are_refused_with_the_count(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # every class 0..254 in every mask, so all of them reach training
        Image.fromarray(rng.integers(0, 255, (15, 17, 3), dtype=np.uint8)).save(tmp_path / "images" / f"m{i}.png")
        Image.fromarray(np.roll(np.arange(255, dtype=np.uint8), 7 * i).reshape(15, 17)).save(tmp_path / "masks" / f"m{i}.png")
    classes = [f"c{k}" for k in range(255)]
    raw = import_dataset(folder_params(raw_params, tmp_path, classes=classes), tmp_path / "raw", tmp_path / "cache")
    assert raw.problems == [] and len(raw.pairs) == 3
    assert np.array_equal(np.asarray(Image.open(raw.root / "masks" / "m0.png")), np.arange(255).reshape(15, 17))
    summary = preprocess(raw, prep(to=15), tmp_path / "processed")
    assert list(summary["class_pixels"]["train"].values()) == [1] * 255 and summary["rejected"] == []  # one mask: one pixel each

    raw_params["data"]["folder"]["classes"] = [f"class{k}" for k in range(300)]
    with pytest.raises(SegpipeConfigError) as error:
        parse_params(raw_params)
    assert "data.folder.classes: List should have at most 255 items after validation, not 300" in str(error.value)
    assert "class299" not in str(error.value)


# --- smaller ones -------------------------------------------------------------------------

def test_predict_takes_webp_and_gif_from_a_folder_and_notes_an_animated_gifs_first_frame(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    photos = [synthetic_photo(40, 56, seed=k) for k in range(3)]
    Image.fromarray(photos[0]).save(tmp_path / "photos" / "a.webp", lossless=True)
    frames = [Image.fromarray(p).convert("P") for p in photos[1:]]
    frames[0].save(tmp_path / "photos" / "b.gif", save_all=True, append_images=frames[1:])
    model_path = tiny_checkpoint(tmp_path / "model.pt", photos)
    assert main(["predict", str(tmp_path / "photos"), "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [e["input"].rsplit("/", 1)[1] for e in manifest["predicted"]] == ["a.webp", "b.gif"]
    assert "note" not in manifest["predicted"][0]
    assert manifest["predicted"][1]["note"].endswith("b.gif is animated (2 frames): only its first frame is used")
    assert "b.gif is animated (2 frames): only its first frame is used" in capsys.readouterr().err


def test_masks_named_with_a_suffix_are_told_the_names_differ_by_it(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem, (photo, mask) in zip(("horse1", "horse10", "horse2"), upright_pairs(3, 8, 8)):
        Image.fromarray(photo).save(tmp_path / "images" / f"{stem}.jpg")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{stem}_mask.png")
    raw = import_dataset(folder_params(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert raw.pairs == [] and len(raw.problems) == 6
    reasons = {p.id: p.reason for p in raw.problems}
    for stem in ("horse1", "horse10"):  # horse10_mask is horse10's, not horse1's
        hint = (f"{stem}_mask.png beside {stem}.jpg: the names differ by '_mask', and images and masks are matched by "
                f"the whole stem: rename the masks to the images' stems ({stem}.png)")
        assert reasons[stem].endswith(hint) and reasons[f"{stem}_mask"].endswith(hint)


def test_grey_alpha_masks_are_told_to_list_grey_values(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (photo, mask) in enumerate(upright_pairs(3, 8, 8)):
        Image.fromarray(photo).save(tmp_path / "images" / f"p{i}.png")
        Image.fromarray(np.stack([mask * 255, np.full_like(mask, 255)], axis=-1), mode="LA").save(tmp_path / "masks" / f"p{i}.png")
    raw = import_dataset(folder_params(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    assert raw.problems[0].reason.endswith("p0.png is a grey+alpha (LA) mask: its grey values are read, the alpha is "
                                           "not; list each class's grey value in data.folder.values (e.g. [0, 255])")
    raw = import_dataset(folder_params(raw_params, tmp_path, values=[0, 255]), tmp_path / "raw2", tmp_path / "cache")
    assert raw.problems == [] and len(raw.pairs) == 3  # and that advice works


def test_two_pairs_are_told_to_add_images_not_to_change_the_split_fractions(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (photo, mask) in enumerate(upright_pairs(2, 8, 8)):
        Image.fromarray(photo).save(tmp_path / "images" / f"p{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"p{i}.png")
    raw = import_dataset(folder_params(raw_params, tmp_path), tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(SegpipeError) as error:
        preprocess(raw, prep(to=8), tmp_path / "processed")
    assert str(error.value) == ("only 2 usable samples, and train, val and test each need at least one: add images "
                                "(split(s) val, test would be empty)")
