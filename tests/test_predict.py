"""`segpipe predict`: masks at every photo's own size, sliding windows without seams on
large photos, outputs that never collide, and bad files that do not stop the rest.

The models are tiny cnns built here with random weights whose batch-norm statistics
come from the photos they will see and whose class-1 bias sits at the median
margin, so each class covers about half of a photo: masks with real structure,
never one class everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from segpipe.cli import main
from segpipe.data.images import read_rgb
from segpipe.data.processed import DatasetInfo
from segpipe.data.resolution import Resize
from segpipe.device import runtime_for
from segpipe.errors import SegpipeError
from segpipe.models import ModelSpec, create_model
from segpipe.models.checkpoint import ModelCheckpoint, load_model_checkpoint
from segpipe.reporting.overlay import PALETTE, overlay
from segpipe.serving.inference import Predictor, WindowPlan, model_input, window_starts
from segpipe.serving.predict import draw_legend, output_names
from tests.conftest import SHARED

HORSES = SHARED / "datasets" / "weizmann_horse" / "rgb"
needs_horses = pytest.mark.skipif(not HORSES.is_dir(), reason=f"{HORSES} is absent: the Weizmann horse photos are not on "
                                                                "this machine")
CLASSES = ["background", "horse"]
# Pixels whose two logits are closer than this may flip between two exact-in-theory
# computations (another batch size, another runtime): float32 rounding, not a bug.
TIE = 1e-4


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 'photo': smooth colour blobs with fine noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)


def tiny_checkpoint(path: Path, photos: list[np.ndarray], name: str = "cnn", resize: dict | None = None,
                    input_shape: tuple[int, int] = (64, 64)) -> Path:
    """Save a tiny two-class model (base_channels 4) calibrated on `photos` (see the module doc)."""
    torch.manual_seed(0)
    info = DatasetInfo("folder", CLASSES, 255, resize or {"by": "shorter_side", "to": 64}, [0.45, 0.43, 0.38],
                       [0.27, 0.26, 0.28])
    spec = ModelSpec(name, len(CLASSES), "max", 4)
    model = create_model(spec)
    rule = Resize(**info.resize)
    inputs = [model_input([p], rule.shape_for(*p.shape[:2]), info) for p in photos]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the photos
        model.train()
        for x in inputs:
            model(x)
        model.eval()
        margins = torch.cat([(lambda out: (out[0, 1] - out[0, 0]).flatten())(model(x)) for x in inputs])
        model.classifier.bias[1] -= margins.median()
    ModelCheckpoint(spec, model.state_dict(), info, input_shape, 1, {}).save(path)
    return path


def reference_logits(model: torch.nn.Module, photo: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """What predict must compute for a photo scored whole, written out independently:
    PIL bilinear to the working size, normalise, forward, bilinear back, (C, H, W)."""
    h, w = Resize(**info.resize).shape_for(*photo.shape[:2])
    small = np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255
    x = torch.from_numpy((small - np.array(info.mean, np.float32)) / np.array(info.std, np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return F.interpolate(model(x), size=photo.shape[:2], mode="bilinear", align_corners=False)[0]


def assert_same_mask(mask: np.ndarray, logits: torch.Tensor) -> None:
    """Exactly the argmax of `logits`, except on pixels where two classes tie to within TIE."""
    top2 = logits.topk(2, dim=0).values
    clear = ((top2[0] - top2[1]) > TIE).numpy()
    expected = logits.argmax(dim=0).numpy()
    assert mask.shape == expected.shape
    assert np.array_equal(mask[clear], expected[clear])
    assert clear.mean() > 0.99


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:6] == PALETTE[:2].reshape(-1).tolist()
        return np.asarray(image)


@needs_horses
def test_masks_of_horse_photos_come_back_at_each_photos_own_size(tmp_path, capsys):
    paths = [HORSES / f"horse00{k}.jpg" for k in range(1, 7)]
    photos = [read_rgb(p) for p in paths]
    assert len({p.shape for p in photos}) == 6  # six sizes, one of them portrait
    model_path = tiny_checkpoint(tmp_path / "model.pt", photos)
    assert main(["predict", *map(str, paths), "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    assert "horse001_mask.png" in capsys.readouterr().out
    model = load_model_checkpoint(model_path).build_model()
    for path, photo in zip(paths, photos):
        mask = read_mask(tmp_path / "out" / f"{path.stem}_mask.png")
        assert mask.shape == photo.shape[:2]
        assert set(np.unique(mask)) == {0, 1}
        assert_same_mask(mask, reference_logits(model, photo, load_model_checkpoint(model_path).data))
        with Image.open(tmp_path / "out" / f"{path.stem}_overlay.png") as overlay_image:
            assert overlay_image.size == (photo.shape[1], photo.shape[0]) and overlay_image.mode == "RGB"
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    assert [e["size"] for e in manifest["predicted"]] == [list(p.shape[:2]) for p in photos]
    assert {e["windows"] for e in manifest["predicted"]} == {1} and manifest["failed"] == []
    assert manifest["predicted"][0]["working_size"] == [64, 87]  # 590x800 by its shorter side to 64


def test_a_2000x1500_photo_goes_through_windows_without_seams(tmp_path, monkeypatch):
    photo = synthetic_photo(1500, 2000, seed=3)
    Image.fromarray(photo).save(tmp_path / "big.bmp")
    # 0.256 brings 2000x1500 to 512x384, multiples of the cnn's stride (8), where windows
    # and the whole image pool the same pixels; windows of 160 make 24 of them.
    resize = {"by": "factor", "to": 0.256}
    model_path = tiny_checkpoint(tmp_path / "model.pt", [photo], resize=resize, input_shape=(160, 160))
    assert main(["predict", str(tmp_path / "big.bmp"), "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    entry = json.loads((tmp_path / "out/predictions.json").read_text())["predicted"][0]
    assert (entry["size"], entry["working_size"], entry["windows"]) == ([1500, 2000], [384, 512], 24)
    windowed = read_mask(tmp_path / "out/big_mask.png")
    assert windowed.shape == (1500, 2000)

    checkpoint = load_model_checkpoint(model_path)
    runtime = runtime_for("cpu", amp=False, channels_last=False)
    whole = next(Predictor(checkpoint, runtime, WindowPlan(None)).score([photo]))
    assert whole.windows == 1
    reference = whole.mask()
    assert 0.2 < reference.mean() < 0.8  # both classes, in structure: a seam would show

    # Where windows meet: 6 original pixels either side of every inner window edge.
    seams = np.zeros(reference.shape, bool)
    for axis, (length, scale) in enumerate([(384, 1500 / 384), (512, 2000 / 512)]):
        for start in window_starts(length, 160, 0.5, 8):
            for edge in (start, start + 160):
                if 0 < edge < length:
                    band = slice(max(0, round(edge * scale) - 6), round(edge * scale) + 6)
                    seams[(band, slice(None)) if axis == 0 else (slice(None), band)] = True

    def disagreement(mask: np.ndarray) -> tuple[float, float]:
        differs = mask != reference
        return differs.mean(), differs[seams].mean()

    overall, at_seams = disagreement(windowed)
    assert overall < 0.01 and at_seams < 0.01, (overall, at_seams)

    # The same check sees seams when they are there: abutting windows, averaged flat.
    monkeypatch.setattr("segpipe.serving.inference.window_weight", lambda h, w, device: torch.ones(h, w, device=device))
    tiled = next(Predictor(checkpoint, runtime, WindowPlan((160, 160), overlap=0.0)).score([photo]))
    assert tiled.windows == 12
    tiled_overall, tiled_at_seams = disagreement(tiled.mask())
    assert tiled_at_seams > 0.05 and tiled_at_seams > tiled_overall, (tiled_overall, tiled_at_seams)


def test_windows_narrower_than_the_models_stride_still_score_every_pixel(tmp_path):
    # Training images smaller than the stride (30x30 for an smp encoder's 32, here 5x5 for the cnn's 8): windows
    # of that size, at offsets a stride apart, once left the pixels between them NaN.
    photo = synthetic_photo(64, 96, seed=5)
    checkpoint = load_model_checkpoint(tiny_checkpoint(tmp_path / "model.pt", [photo], input_shape=(5, 5)))
    predictor = Predictor(checkpoint, runtime_for("cpu", amp=False, channels_last=False), WindowPlan.parse("auto", (5, 5), 0.5))
    assert predictor.stride == 8 and predictor.plan.applies_to(64, 96)
    scored = next(predictor.score([photo]))
    assert torch.isfinite(scored.logits).all()
    assert scored.windows == 8 * 12  # windows of 8x8, a stride apart, over the 64x96 working image


def test_inputs_with_the_same_stem_keep_their_own_outputs(tmp_path):
    sizes = {"d1/img.jpg": (30, 40), "d2/img.jpg": (35, 50), "d1/img.png": (45, 60)}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(synthetic_photo(h, w, seed=k)).save(tmp_path / name)
    model_path = tiny_checkpoint(tmp_path / "model.pt", [synthetic_photo(64, 64, 0)])
    args = [str(tmp_path / name) for name in sizes]
    assert main(["predict", *args, "--model", str(model_path), "--out", str(tmp_path / "out")]) == 0
    expected = {"d1/img.jpg": "d1/img_jpg", "d2/img.jpg": "d2/img", "d1/img.png": "d1/img_png"}
    for name, stem in expected.items():
        # Each input's own mask: its size tells them apart.
        assert read_mask(tmp_path / "out" / f"{stem}_mask.png").shape == sizes[name]
        assert (tmp_path / "out" / f"{stem}_overlay.png").is_file()
    assert len(list((tmp_path / "out").rglob("*.png"))) == 6
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    assert {e["input"]: e["mask"] for e in manifest["predicted"]} == {
        str(tmp_path / name): str(tmp_path / "out" / f"{stem}_mask.png") for name, stem in expected.items()}


def test_output_names_differ_even_on_case_insensitive_disks_and_after_adding_the_extension(tmp_path):
    files = [tmp_path / "a/img.jpg", tmp_path / "a/IMG.png", tmp_path / "a/img_jpg.png", tmp_path / "b/c/x.tif"]
    names = output_names(files)
    assert names == {files[0]: Path("a/img_jpg_1"), files[1]: Path("a/IMG_png"), files[2]: Path("a/img_jpg_2"),
                     files[3]: Path("b/c/x")}
    assert output_names([tmp_path / "photos/one.jpg"]) == {tmp_path / "photos/one.jpg": Path("one")}


def test_a_bad_file_is_listed_and_the_good_ones_are_still_predicted(tmp_path, capsys):
    for name, seed in (("good1.jpg", 1), ("good2.png", 2)):
        Image.fromarray(synthetic_photo(48, 64, seed)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    model_path = tiny_checkpoint(tmp_path / "model.pt", [synthetic_photo(64, 64, 0)])
    inputs = [tmp_path / "good1.jpg", tmp_path / "broken.jpg", tmp_path / "missing.jpg", tmp_path / "good2.png"]
    status = main(["predict", *map(str, inputs), "--model", str(model_path), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert status == 2
    assert "error: 2 input(s) could not be predicted (the others were):" in err
    assert f"{tmp_path / 'broken.jpg'}: unreadable" in err and f"{tmp_path / 'missing.jpg'}: no such file or folder" in err
    assert "Traceback" not in err
    for stem in ("good1", "good2"):
        assert read_mask(tmp_path / "out" / f"{stem}_mask.png").shape == (48, 64)
        assert f"{stem}_mask.png" in out
    assert not list((tmp_path / "out").glob("broken*")) and not list((tmp_path / "out").glob(".*"))
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    assert [f["input"] for f in manifest["failed"]] == [str(tmp_path / "missing.jpg"), str(tmp_path / "broken.jpg")]


def test_folders_and_globs_each_file_once_with_probability_maps(tmp_path):
    (tmp_path / "photos/nested").mkdir(parents=True)
    for k, name in enumerate(["photos/a.jpg", "photos/b.png", "photos/nested/c.png", "photos/nested/d.jpg"]):
        Image.fromarray(synthetic_photo(40 + k, 56, k)).save(tmp_path / name)
    (tmp_path / "photos/notes.txt").write_text("not an image")
    model_path = tiny_checkpoint(tmp_path / "model.pt", [synthetic_photo(64, 64, 0)])
    status = main(["predict", str(tmp_path / "photos"), str(tmp_path / "photos/**/*.png"), str(tmp_path / "photos/a.jpg"),
                   "--model", str(model_path), "--out", str(tmp_path / "out"), "--probabilities"])
    assert status == 0
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    # The folder gives its own images (not nested ones, not notes.txt); the glob recurses; a.jpg comes once.
    assert [Path(e["input"]).relative_to(tmp_path).as_posix() for e in manifest["predicted"]] == [
        "photos/a.jpg", "photos/b.png", "photos/nested/c.png"]
    entry = manifest["predicted"][2]
    assert entry["mask"] == str(tmp_path / "out/nested/c_mask.png")
    assert entry["probabilities"] == [str(tmp_path / "out/nested/c_prob_0_background.png"),
                                      str(tmp_path / "out/nested/c_prob_1_horse.png")]
    maps = np.stack([np.asarray(Image.open(p), dtype=np.int32) for p in entry["probabilities"]])
    assert maps.shape == (2, 42, 56)
    assert np.abs(maps.sum(axis=0) - 255).max() <= 1  # each rounded on its own
    mask = read_mask(Path(entry["mask"]))
    clear = np.abs(maps[1] - maps[0]) > 2
    assert np.array_equal(mask[clear], maps.argmax(axis=0)[clear])


def test_the_overlay_legend_names_the_classes_in_the_mask_and_stays_in_its_corner():
    photo = synthetic_photo(300, 400, 5)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:200, 150:350] = 1
    painted = overlay(photo, mask)
    with_legend = draw_legend(painted, mask, CLASSES)
    changed = np.argwhere((with_legend != painted).any(axis=-1))
    assert len(changed) > 200
    assert changed[:, 0].max() < 150 and changed[:, 1].max() < 200  # within the top-left quarter
    # The horse swatch carries the horse colour.
    assert (with_legend.reshape(-1, 3) == PALETTE[1]).all(axis=1).sum() >= 16
    # Too small for a legible legend: left as it is.
    small = overlay(photo[:37, :50], mask[:37, :50])
    assert np.array_equal(draw_legend(small, mask[:37, :50], CLASSES), small)


def test_bad_window_options_are_named(tmp_path, capsys):
    model_path = tiny_checkpoint(tmp_path / "model.pt", [synthetic_photo(64, 64, 0)])
    Image.fromarray(synthetic_photo(40, 40, 1)).save(tmp_path / "a.png")
    for option, message in ((["--window", "0x5"], "--window '0x5': give auto, none, or a size HxW"),
                            (["--overlap", "1"], "--overlap 1.0: must be at least 0 and below 1")):
        assert main(["predict", str(tmp_path / "a.png"), "--model", str(model_path), *option]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SegpipeError, match=r"nothing to predict: .*nothing.png: no such file or folder"):
        from segpipe.serving.predict import predict_images

        predict_images(model_path, [str(tmp_path / "nothing.png")], tmp_path / "out")
