import numpy as np
import pytest
from PIL import Image

from segpipe.config import PreprocessParams, ResizeParams, ShapesParams, SplitParams
from segpipe.data import IGNORE_INDEX
from segpipe.data.preprocess import assign_splits, preprocess
from segpipe.data.processed import SPLITS, DatasetInfo, ProcessedSplit
from segpipe.data.raw import Pair, RawDataset
from segpipe.data.shapes import CLASSES, generate, render_sample
from segpipe.errors import SegpipeError

SPLIT = SplitParams(seed=0, val_fraction=0.2, test_fraction=0.2)


def params(to=8, by="shorter_side", on_bad_sample="error", on_leak="warn", min_side=4) -> PreprocessParams:
    return PreprocessParams(resize=ResizeParams(by=by, to=to), min_side=min_side, on_bad_sample=on_bad_sample,
                            on_leak=on_leak, split=SPLIT, workers=1)


def shapes_dataset(tmp_path, n=20, size=32):
    raw = generate(ShapesParams(num_images=n, image_size=size, max_objects=4, seed=3), tmp_path / "raw")
    raw.write_manifest()
    return RawDataset.read(tmp_path / "raw")


def test_shapes_are_deterministic_per_seed_and_index():
    a_image, a_mask = render_sample(seed=1, index=5, size=48, max_objects=4)
    b_image, b_mask = render_sample(seed=1, index=5, size=48, max_objects=4)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
    c_image, _ = render_sample(seed=2, index=5, size=48, max_objects=4)
    assert not np.array_equal(a_image, c_image)


def test_shapes_cover_every_class_with_varied_sizes_and_uninformative_colour():
    masks, images = [], []
    for i in range(60):
        image, mask = render_sample(seed=0, index=i, size=48, max_objects=4)
        images.append(image), masks.append(mask)
    masks, images = np.stack(masks), np.stack(images)
    assert set(np.unique(masks)) == set(range(len(CLASSES)))
    areas = [(m == c).sum() for m in masks for c in range(1, len(CLASSES)) if (m == c).any()]
    assert max(areas) > 4 * min(areas)
    # The mean colour of each class is close to grey: colour does not give the class away.
    class_means = np.array([images[masks == c].mean(axis=0) for c in range(1, len(CLASSES))])
    assert np.abs(class_means - class_means.mean(axis=0)).max() < 25


def test_generate_writes_pngs_and_a_manifest(tmp_path):
    raw = shapes_dataset(tmp_path, n=5)
    assert raw.classes == CLASSES and len(raw.pairs) == 5
    with Image.open(raw.root / raw.pairs[0].image) as image, Image.open(raw.root / raw.pairs[0].mask) as mask:
        assert image.size == mask.size == (32, 32) and image.mode == "RGB" and mask.mode == "L"


def test_splits_are_deterministic_disjoint_and_complete():
    pairs = [Pair(id=f"{i:03d}", image="", mask="") for i in range(50)]
    first = assign_splits(pairs, SPLIT)
    again = assign_splits(list(reversed(pairs)), SPLIT)
    assert {k: [p.id for p in v] for k, v in first.items()} == {k: [p.id for p in v] for k, v in again.items()}
    ids = [p.id for name in SPLITS for p in first[name]]
    assert sorted(ids) == sorted(p.id for p in pairs) and len(ids) == len(set(ids))
    assert (len(first["train"]), len(first["val"]), len(first["test"])) == (30, 10, 10)
    other = assign_splits(pairs, SplitParams(seed=1, val_fraction=0.2, test_fraction=0.2))
    assert [p.id for p in other["test"]] != [p.id for p in first["test"]]


def test_official_splits_are_kept_and_trainval_is_divided():
    pairs = [Pair(id=f"t{i}", image="", mask="", split="test") for i in range(4)]
    pairs += [Pair(id=f"v{i}", image="", mask="", split="trainval") for i in range(10)]
    splits = assign_splits(pairs, SPLIT)
    assert [p.id for p in splits["test"]] == ["t0", "t1", "t2", "t3"]
    assert len(splits["val"]) == 2 and len(splits["train"]) == 8


def test_preprocess_writes_uint8_splits_and_a_summary(tmp_path):
    raw = shapes_dataset(tmp_path, n=20, size=40)
    summary = preprocess(raw, params(to=24), tmp_path / "processed")
    assert summary["counts"] == {"train": 12, "val": 4, "test": 4}
    train = ProcessedSplit.load(tmp_path / "processed", "train")
    images, masks = train.stacked(np.arange(len(train)))
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8 and train.uniform_shape == (24, 24)
    assert masks.shape == (12, 24, 24) and set(np.unique(masks)) <= set(range(4))
    assert sum(summary["class_pixels"]["train"].values()) == 12 * 24 * 24
    assert sum(summary["class_frequency"].values()) == pytest.approx(1.0, abs=1e-4)
    info = DatasetInfo.load(tmp_path / "processed")
    assert info.classes == CLASSES and info.resize == {"by": "shorter_side", "to": 24} and len(info.mean) == 3
    # Channel statistics of the training images, streamed, equal a direct computation.
    pixels = images.reshape(-1, 3) / 255.0
    assert info.mean == pytest.approx(pixels.mean(axis=0), abs=1e-5) and info.std == pytest.approx(pixels.std(axis=0), abs=1e-5)
    assert summary["rejected"] == [] and summary["leaks"] == []
    # The test split keeps its masks at the original resolution for scoring.
    test = ProcessedSplit.load(tmp_path / "processed", "test")
    original = np.asarray(Image.open(raw.root / f"masks/{test.ids[0]}.png"))
    assert test.native_mask(0).shape == (40, 40) and np.array_equal(test.native_mask(0), original)


def write_pair(root, name, image, mask):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return Pair(id=name, image=f"images/{name}.png", mask=f"masks/{name}.png")


def dataset_with_bad_samples(tmp_path):
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    pairs = [write_pair(root, f"ok{i}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                        rng.integers(0, 2, (16, 16), dtype=np.uint8)) for i in range(6)]
    pairs.append(write_pair(root, "mismatch", np.zeros((16, 16, 3), np.uint8), np.zeros((12, 16), np.uint8)))
    pairs.append(write_pair(root, "outofrange", np.zeros((16, 16, 3), np.uint8), np.full((16, 16), 7, np.uint8)))
    (root / "images" / "broken.png").write_bytes(b"not a png")
    pairs.append(Pair(id="broken", image="images/broken.png", mask="masks/ok0.png"))
    return RawDataset(root=root, dataset="test", classes=["bg", "fg"], pairs=pairs)


def test_bad_samples_stop_preprocess_with_every_file_named(tmp_path):
    raw = dataset_with_bad_samples(tmp_path)
    with pytest.raises(SegpipeError) as error:
        preprocess(raw, params(), tmp_path / "out")
    text = str(error.value)
    assert "3 of 9 samples" in text
    assert "images/mismatch.png is 16x16 but" in text and "masks/mismatch.png is 16x12" in text
    assert "masks/outofrange.png: labels [7] out of range; valid are 0..1 and 255 (ignore)" in text
    assert "images/broken.png: unreadable" in text
    assert "preprocess.on_bad_sample: skip" in text
    assert not (tmp_path / "out" / "summary.json").exists()


def test_bad_samples_are_skipped_and_listed_when_asked(tmp_path):
    raw = dataset_with_bad_samples(tmp_path)
    summary = preprocess(raw, params(on_bad_sample="skip"), tmp_path / "out")
    assert sorted(r["id"] for r in summary["rejected"]) == ["broken", "mismatch", "outofrange"]
    assert sum(summary["counts"].values()) == 6


def test_ignore_label_survives_resizing(tmp_path):
    root = tmp_path / "raw"
    mask = np.zeros((20, 20), np.uint8)
    mask[:, 10:] = IGNORE_INDEX
    mask[5:10, 2:8] = 1
    pairs = [write_pair(root, f"p{i}", np.full((20, 20, 3), 100, np.uint8), mask) for i in range(5)]
    raw = RawDataset(root=root, dataset="test", classes=["bg", "fg"], pairs=pairs)
    preprocess(raw, params(to=10), tmp_path / "out")
    train = ProcessedSplit.load(tmp_path / "out", "train")
    masks = train.stacked(np.arange(len(train)))[1]
    assert set(np.unique(masks)) == {0, 1, IGNORE_INDEX}
    assert (masks[:, :, 5:] == IGNORE_INDEX).all() and (masks[:, :, :5] != IGNORE_INDEX).all()


def test_error_lists_name_the_first_files_and_count_the_rest():
    from segpipe.errors import shortlist

    assert shortlist(["a", "b"], 3) == "a, b"
    assert shortlist(["a", "b", "c", "d", "e"], 2) == "a, b, ... and 3 more"
    assert shortlist(["x", "y", "z"], 1, separator="\n") == "x\n... and 2 more"
