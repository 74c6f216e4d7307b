"""Real dataset sources, fed from a loopback server with archives in the exact official layouts."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from segpipe.config import ResizeParams, SegpipeConfigError, parse_params
from segpipe.data import IGNORE_INDEX, oxford_pet, voc2012
from segpipe.data.download import Archive
from segpipe.data.preprocess import load_sample, preprocess
from segpipe.data.processed import ProcessedSplit
from segpipe.data.raw import RawDataset
from segpipe.data.resolution import Resize
from segpipe.data.sources import import_dataset
from segpipe.errors import SegpipeError


def png_bytes(array, mode=None, palette=None) -> bytes:
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], gz: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(server, monkeypatch, module, archives: dict[str, bytes]):
    """Serve test archives and make the source expect their checksums."""
    server.files.update(archives)
    patched = [Archive(a.filename, a.url, "md5:" + hashlib.md5(archives[a.filename]).hexdigest()) for a in module.ARCHIVES]
    monkeypatch.setattr(module, "ARCHIVES", patched)


def tiny(params):
    """Preprocess settings for the 4x4 images these tests write."""
    return params.preprocess.model_copy(update={"resize": ResizeParams(by="shorter_side", to=4), "min_side": 2})


def params_for(raw_params, dataset, mirror, **section):
    raw_params["data"]["dataset"] = dataset
    raw_params["data"]["mirror"] = mirror
    for key, value in section.items():
        raw_params["data"][key] |= value
    return parse_params(raw_params)


# --- Oxford-IIIT Pet -------------------------------------------------------------

TRIMAP = np.array([[2, 2, 2, 2], [2, 3, 3, 2], [2, 3, 1, 2], [2, 2, 2, 2]], dtype=np.uint8)
OXFORD_TRAINVAL = ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2", "beagle_3"]
OXFORD_TEST = ["Abyssinian_3", "beagle_4"]


def oxford_archives() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = {f"images/{i}.jpg": jpeg_bytes(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)) for i in OXFORD_TRAINVAL + OXFORD_TEST}
    annotations = {f"annotations/trimaps/{i}.png": png_bytes(TRIMAP) for i in OXFORD_TRAINVAL + OXFORD_TEST}
    annotations["annotations/trainval.txt"] = "".join(f"{i} 1 1 1\n" for i in OXFORD_TRAINVAL).encode()
    annotations["annotations/test.txt"] = "".join(f"{i} 2 2 2\n" for i in OXFORD_TEST).encode()
    annotations["annotations/xmls/Abyssinian_1.xml"] = b"<annotation/>"
    return {"images.tar.gz": tar_bytes(images, gz=True), "annotations.tar.gz": tar_bytes(annotations, gz=True)}


@pytest.mark.parametrize("border, classes, border_label", [
    ("ignore", ["background", "pet"], IGNORE_INDEX),
    ("pet", ["background", "pet"], 1),
    ("background", ["background", "pet"], 0),
    ("class", ["background", "pet", "border"], 2),
])
def test_oxford_pet_trimaps_become_classes(archive_server, monkeypatch, raw_params, tmp_path, border, classes, border_label):
    serve(archive_server, monkeypatch, oxford_pet, oxford_archives())
    params = params_for(raw_params, "oxford_pet", archive_server.url, oxford_pet={"border": border})
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    assert raw.classes == classes
    assert {p.id: p.split for p in raw.pairs} == {**{i: "trainval" for i in OXFORD_TRAINVAL}, **{i: "test" for i in OXFORD_TEST}}
    mask = np.asarray(Image.open(tmp_path / "raw" / raw.pairs[0].mask))
    expected = np.where(TRIMAP == 2, 0, np.where(TRIMAP == 1, 1, border_label))
    assert np.array_equal(mask, expected)
    assert not (tmp_path / "raw/annotations/xmls").exists()
    assert RawDataset.read(tmp_path / "raw").classes == classes


def test_oxford_pet_keeps_the_official_test_list_and_carves_validation_from_trainval(
        archive_server, monkeypatch, raw_params, tmp_path):
    serve(archive_server, monkeypatch, oxford_pet, oxford_archives())
    params = params_for(raw_params, "oxford_pet", archive_server.url)
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    summary = preprocess(raw, tiny(params), tmp_path / "processed")
    assert ProcessedSplit.load(tmp_path / "processed", "test").ids == sorted(OXFORD_TEST)
    assert summary["counts"] == {"train": 4, "val": 1, "test": 2}
    assert summary["class_pixels"]["test"] == {"background": 2 * 12, "pet": 2 * 1}

    # A second import finds the verified archives in the cache and downloads nothing.
    requests = len(archive_server.requests)
    import_dataset(params, tmp_path / "raw2", tmp_path / "cache")
    assert len(archive_server.requests) == requests


# --- PASCAL VOC 2012 ---------------------------------------------------------------

def voc_palette() -> list[int]:
    from segpipe.reporting.overlay import PALETTE

    return PALETTE.reshape(-1).tolist()


def test_voc2012_imports_palette_masks_with_the_official_lists(archive_server, monkeypatch, raw_params, tmp_path):
    base = "VOCdevkit/VOC2012"
    rng = np.random.default_rng(0)
    mask = np.array([[0, 0, 15, 15], [0, 255, 15, 15], [12, 12, 255, 0], [12, 12, 0, 0]], dtype=np.uint8)
    train, val, detection_only = ["2007_000032", "2007_000039"], ["2007_000033"], "2008_000001"
    files = {f"{base}/ImageSets/Segmentation/train.txt": "\n".join(train).encode() + b"\n",
             f"{base}/ImageSets/Segmentation/val.txt": "\n".join(val).encode() + b"\n",
             f"{base}/JPEGImages/{detection_only}.jpg": jpeg_bytes(np.zeros((4, 4, 3), np.uint8)),
             f"{base}/Annotations/{detection_only}.xml": b"<annotation/>"}
    for image_id in train + val:
        files[f"{base}/JPEGImages/{image_id}.jpg"] = jpeg_bytes(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
        files[f"{base}/SegmentationClass/{image_id}.png"] = png_bytes(mask, mode="P", palette=voc_palette())
    serve(archive_server, monkeypatch, voc2012, {"VOCtrainval_11-May-2012.tar": tar_bytes(files, gz=False)})

    params = params_for(raw_params, "voc2012", archive_server.url)
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    assert len(raw.classes) == 21 and raw.classes[0] == "background" and raw.classes[15] == "person"
    assert raw.classes[12] == "dog" and raw.classes[20] == "tvmonitor"
    assert {p.id: p.split for p in raw.pairs} == {"2007_000032": "trainval", "2007_000039": "trainval", "2007_000033": "test"}
    # Only what segmentation needs is extracted.
    assert not (tmp_path / "raw" / base / "JPEGImages" / f"{detection_only}.jpg").exists()
    assert not (tmp_path / "raw" / base / "Annotations").exists()

    test_pair = next(p for p in raw.pairs if p.split == "test")
    sample = load_sample(raw, test_pair, Resize("shorter_side", 4), min_side=1, keep_native=True)
    assert np.array_equal(sample.mask, mask) and np.array_equal(sample.native_mask, mask)  # palette indices are the classes
    # Classes that no training mask shows stop preprocess, named with the likely cause.
    with pytest.raises(SegpipeError, match=r"class 'aeroplane' \(index 1\), 'bicycle' \(index 2\).* has no pixels at all in "
                                           r"the training split"):
        preprocess(raw, tiny(params), tmp_path / "processed")


# --- your own folder -----------------------------------------------------------------

def folder_params(raw_params, tmp_path, **folder):
    spec = {"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")} | folder
    return params_for(raw_params, "folder", None, folder=spec)


def write_folder(tmp_path, n=4, image_size=(12, 8), mask_size=(12, 8), lossy=True):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        labels = np.zeros(mask_size[::-1], np.uint8)
        labels[2:6, 3:9] = 1
        truth[f"img{i}"] = labels
        Image.fromarray(rng.integers(0, 255, (*image_size[::-1], 3), dtype=np.uint8)).save(tmp_path / "images" / f"img{i}.jpg")
        grey = labels * 255
        if lossy:
            Image.fromarray(grey).save(tmp_path / "masks" / f"img{i}.jpg", quality=70)
        else:
            Image.fromarray(grey).save(tmp_path / "masks" / f"img{i}.png")
    return truth


def test_folder_with_lossy_masks_and_a_threshold(raw_params, tmp_path):
    truth = write_folder(tmp_path)
    params = folder_params(raw_params, tmp_path, classes=["background", "horse"], threshold=128)
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    assert raw.classes == ["background", "horse"] and len(raw.pairs) == 4
    for pair in raw.pairs:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "raw" / pair.mask)), truth[pair.id])


def test_folder_with_different_sizes_fails_naming_the_files_and_the_option(raw_params, tmp_path):
    write_folder(tmp_path, image_size=(24, 16), mask_size=(12, 8))
    params = folder_params(raw_params, tmp_path, threshold=128)
    with pytest.raises(SegpipeError) as error:
        import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    text = str(error.value)
    assert "4 images differ in size from their masks: img0.jpg 24x16 vs img0.jpg 12x8" in text
    assert "data.folder.resize" in text and "image_to_mask" in text and "mask_to_image" in text


@pytest.mark.parametrize("resize, size", [("image_to_mask", (12, 8)), ("mask_to_image", (24, 16))])
def test_folder_resizes_only_when_told(raw_params, tmp_path, resize, size):
    write_folder(tmp_path, image_size=(24, 16), mask_size=(12, 8))
    params = folder_params(raw_params, tmp_path, threshold=128, resize=resize)
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    pair = raw.pairs[0]
    assert Image.open(tmp_path / "raw" / pair.image).size == size == Image.open(tmp_path / "raw" / pair.mask).size


def test_folder_with_colour_masks_ignore_colour_and_split_lists(raw_params, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    colours = {"background": [0, 0, 0], "road": [128, 64, 128], "car": [0, 0, 142]}
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, :] = colours["road"]
    mask[1, :] = colours["car"]
    mask[3, 3] = [255, 255, 255]
    for i in range(5):
        Image.fromarray(np.full((4, 4, 3), 50 * i, np.uint8)).save(tmp_path / "images" / f"s{i}.bmp")
        Image.fromarray(mask).save(tmp_path / "masks" / f"s{i}.png")
    (tmp_path / "test.txt").write_text("s3\ns4.bmp\n")
    params = folder_params(raw_params, tmp_path, classes=list(colours), values=list(colours.values()),
                           ignore_value=[255, 255, 255], splits={"test": str(tmp_path / "test.txt")})
    raw = import_dataset(params, tmp_path / "raw", tmp_path / "cache")
    labels = np.asarray(Image.open(tmp_path / "raw" / raw.pairs[0].mask))
    assert labels[0].tolist() == [1] * 4 and labels[1].tolist() == [2] * 4 and labels[3, 3] == IGNORE_INDEX
    assert {p.id: p.split for p in raw.pairs} == {"s0": None, "s1": None, "s2": None, "s3": "test", "s4": "test"}


def test_folder_errors_name_the_problem(raw_params, tmp_path):
    write_folder(tmp_path, lossy=False)
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / "img0.jpg").read_bytes())
    raw = import_dataset(folder_params(raw_params, tmp_path, values=[0, 255]), tmp_path / "raw", tmp_path / "cache")
    assert [(p.id, p.reason.split(": ", 1)[1]) for p in raw.problems] == [("extra", f"no mask with this stem in {tmp_path / 'masks'}")]
    (tmp_path / "images" / "extra.png").unlink()
    raw = import_dataset(folder_params(raw_params, tmp_path, values=[0, 1]), tmp_path / "raw2", tmp_path / "cache")
    assert raw.pairs == [] and len(raw.problems) == 4
    assert "img0.png: mask values [255] match no class in data.folder.values" in raw.problems[0].reason
    with pytest.raises(SegpipeError, match=r"data.folder.images: .*nowhere is not a folder"):
        import_dataset(folder_params(raw_params, tmp_path, images=str(tmp_path / "nowhere")), tmp_path / "raw", tmp_path / "cache")


def test_folder_params_are_checked_before_any_work(raw_params):
    raw_params["data"]["dataset"] = "folder"
    with pytest.raises(SegpipeConfigError, match=r"set data.folder.images and data.folder.masks"):
        parse_params(raw_params)
    raw_params["data"]["folder"] |= {"images": "x", "masks": "y", "classes": ["a", "b", "c"], "threshold": 128}
    with pytest.raises(SegpipeConfigError, match=r"data.folder: threshold splits greyscale masks into two classes"):
        parse_params(raw_params)
