"""The processed-split store: what preprocess writes and train/evaluate read.

    data/processed/summary.json              classes, counts, pixel statistics, rejected files
    data/processed/<split>/images.npy        every image's pixels, uint8, one after another
    data/processed/<split>/masks.npy         every mask's labels (class index or IGNORE_INDEX), uint8
    data/processed/<split>/shapes.npy        (N, 2) height and width of each image at the working resolution
    data/processed/<split>/ids.json          the pair id of each row
    data/processed/test/native_masks.npy     the test masks at their original resolution, for scoring
    data/processed/test/native_shapes.npy    (N, 2) their heights and widths

Images keep their aspect ratio, so they may differ in shape: the arrays are
flat and `shapes.npy` says where each image lies. They stay uint8 and are
memory-mapped on load: decoding and resizing happen once, here, never inside the
training loop. Writing streams sample by sample, so memory stays flat however
large the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segpipe.atomic import read_json, write_json
from segpipe.errors import SegpipeError

SPLITS = ("train", "val", "test")
SUMMARY = "summary.json"
_HEADER = {"descr": "|u1", "fortran_order": False}


class _FlatArrayWriter:
    """A 1-D uint8 .npy file written in pieces: NumPy pads the header so that the
    final length can be written over the placeholder in place."""

    def __init__(self, path: Path):
        self.path, self.length = path, 0
        self.handle = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.handle, {**_HEADER, "shape": (0,)})
        self.offset = self.handle.tell()

    def append(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=np.uint8)
        self.handle.write(data.tobytes())
        self.length += data.size

    def close(self) -> None:
        self.handle.seek(0)
        np.lib.format.write_array_header_1_0(self.handle, {**_HEADER, "shape": (self.length,)})
        if self.handle.tell() != self.offset:  # never: NumPy reserves room for 21 digits
            raise RuntimeError(f"{self.path}: the .npy header changed length")
        self.handle.close()


class SplitWriter:
    """Streams one split's samples to disk."""

    def __init__(self, root: Path, name: str, native: bool = False):
        self.folder = root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images, self.masks = _FlatArrayWriter(self.folder / "images.npy"), _FlatArrayWriter(self.folder / "masks.npy")
        self.native = _FlatArrayWriter(self.folder / "native_masks.npy") if native else None
        self.shapes: list[tuple[int, int]] = []
        self.native_shapes: list[tuple[int, int]] = []
        self.ids: list[str] = []

    def append(self, sample_id: str, image: np.ndarray, mask: np.ndarray, native_mask: np.ndarray | None = None) -> None:
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{sample_id}: image {image.shape[:2]} and mask {mask.shape} differ")
        self.images.append(image)
        self.masks.append(mask)
        self.shapes.append(mask.shape)
        if self.native is not None:
            self.native.append(native_mask)
            self.native_shapes.append(native_mask.shape)
        self.ids.append(sample_id)

    def close(self) -> None:
        self.images.close()
        self.masks.close()
        np.save(self.folder / "shapes.npy", np.array(self.shapes, dtype=np.int64).reshape(-1, 2))
        if self.native is not None:
            self.native.close()
            np.save(self.folder / "native_shapes.npy", np.array(self.native_shapes, dtype=np.int64).reshape(-1, 2))
        write_json(self.folder / "ids.json", self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _offsets(shapes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)


@dataclass(frozen=True)
class ProcessedSplit:
    name: str
    pixels: np.ndarray  # flat uint8 images (H*W*3 per sample)
    labels: np.ndarray  # flat uint8 masks (H*W per sample)
    shapes: np.ndarray  # (N, 2)
    ids: list[str]
    native_labels: np.ndarray | None = None
    native_shapes: np.ndarray | None = None
    _offsets: np.ndarray = field(init=False, repr=False)
    _native_offsets: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_offsets", _offsets(self.shapes))
        native = _offsets(self.native_shapes) if self.native_shapes is not None else None
        object.__setattr__(self, "_native_offsets", native)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def uniform_shape(self) -> tuple[int, int] | None:
        """(height, width) when every image has it, else None."""
        if len(self) and (self.shapes == self.shapes[0]).all():
            return int(self.shapes[0, 0]), int(self.shapes[0, 1])
        return None

    def image(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        start = self._offsets[i]
        return self.pixels[3 * start : 3 * (start + h * w)].reshape(h, w, 3)

    def mask(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.labels[self._offsets[i] : self._offsets[i] + h * w].reshape(h, w)

    def native_mask(self, i: int) -> np.ndarray:
        """The mask at the image's original resolution (the test split only)."""
        if self.native_labels is None:
            raise SegpipeError(f"split {self.name} has no native-resolution masks; re-run preprocess (dvc repro preprocess)")
        h, w = self.native_shapes[i]
        return self.native_labels[self._native_offsets[i] : self._native_offsets[i] + h * w].reshape(h, w)

    def stacked(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, H, W, 3) images and (n, H, W) masks for rows of one shape."""
        shape = self.uniform_shape
        if shape is not None:  # one fancy-indexing copy from the memory map
            h, w = shape
            return (self.pixels.reshape(len(self), h, w, 3)[index], self.labels.reshape(len(self), h, w)[index])
        stack = np.stack
        if not isinstance(self.pixels, np.ndarray):  # on a device (see on_device)
            import torch

            stack = torch.stack
        return stack([self.image(i) for i in index]), stack([self.mask(i) for i in index])

    def on_device(self, device) -> "ProcessedSplit":
        """The same split with its pixels as torch tensors on `device` (a GPU that holds it whole)."""
        import torch

        # torch.tensor copies the read-only memory map (from_numpy would warn that it cannot write to it).
        as_tensor = lambda array: torch.tensor(array, device=device)  # noqa: E731
        return ProcessedSplit(self.name, as_tensor(self.pixels), as_tensor(self.labels), self.shapes, self.ids,
                              None if self.native_labels is None else as_tensor(self.native_labels), self.native_shapes)

    def save(self, root: Path) -> None:
        """Write the split (for small, in-memory splits such as tests build)."""
        writer = SplitWriter(root, self.name, native=self.native_labels is not None)
        for i, sample_id in enumerate(self.ids):
            writer.append(sample_id, self.image(i), self.mask(i), self.native_mask(i) if self.native_labels is not None else None)
        writer.close()

    @classmethod
    def from_arrays(cls, name: str, images: list[np.ndarray], masks: list[np.ndarray], ids: list[str],
                    native_masks: list[np.ndarray] | None = None) -> "ProcessedSplit":
        flat = lambda arrays: np.concatenate([np.asarray(a, np.uint8).reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint8)  # noqa: E731
        shapes = lambda arrays: np.array([np.asarray(a).shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)  # noqa: E731
        return cls(name, flat(images), flat(masks), shapes(masks), list(ids),
                   flat(native_masks) if native_masks is not None else None,
                   shapes(native_masks) if native_masks is not None else None)

    @classmethod
    def load(cls, root: str | Path, name: str) -> "ProcessedSplit":
        folder = Path(root) / name
        if not (folder / "shapes.npy").exists():
            raise SegpipeError(f"{folder}/shapes.npy not found; run the preprocess stage first (dvc repro preprocess)")
        native = (folder / "native_masks.npy").exists()
        return cls(
            name=name,
            pixels=np.load(folder / "images.npy", mmap_mode="r"),
            labels=np.load(folder / "masks.npy", mmap_mode="r"),
            shapes=np.load(folder / "shapes.npy"),
            ids=read_json(folder / "ids.json"),
            native_labels=np.load(folder / "native_masks.npy", mmap_mode="r") if native else None,
            native_shapes=np.load(folder / "native_shapes.npy") if native else None,
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What every later stage needs to know about the processed data."""

    dataset: str
    classes: list[str]
    ignore_index: int
    # How images were brought to the working resolution: {"by": ..., "to": ...}.
    resize: dict
    # Per-channel statistics of the training images, in [0, 1] units.
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def load(cls, root: str | Path) -> "DatasetInfo":
        summary = read_summary(root)
        return cls(**{k: summary[k] for k in ("dataset", "classes", "ignore_index", "resize", "mean", "std")})


def read_summary(root: str | Path) -> dict:
    path = Path(root) / SUMMARY
    if not path.exists():
        raise SegpipeError(f"{path} not found; run the preprocess stage first (dvc repro preprocess)")
    return read_json(path)


def write_summary(root: Path, summary: dict) -> None:
    write_json(root / SUMMARY, summary)
