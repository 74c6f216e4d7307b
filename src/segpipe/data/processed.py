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
training loop. Writing goes sample by sample, so memory stays flat however
large the dataset: streamed in order (SplitWriter), or into files created at
their final size, where any process writes any sample into its planned place
(SplitFiles, which preprocess's pool of processes uses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
        if self.native is not None:
            self.native.close()
        write_index(self.folder, self.ids, self.shapes, self.native_shapes if self.native is not None else None)

    def __len__(self) -> int:
        return len(self.ids)


def write_index(folder: Path, ids: list[str], shapes: list[tuple[int, int]],
                native_shapes: list[tuple[int, int]] | None = None) -> None:
    """The files that say which sample each row is and where it lies in the flat arrays."""
    np.save(folder / "shapes.npy", np.array(shapes, dtype=np.int64).reshape(-1, 2))
    if native_shapes is not None:
        np.save(folder / "native_shapes.npy", np.array(native_shapes, dtype=np.int64).reshape(-1, 2))
    write_json(folder / "ids.json", ids)


def create_flat_array(path: Path, length: int) -> int:
    """A 1-D uint8 .npy file of `length` bytes, at its final size before any is written (sparse: the disk holds
    only what is written later), with the header _FlatArrayWriter ends with; returns where its data starts."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {**_HEADER, "shape": (length,)})
        start = handle.tell()
        handle.truncate(start + length)
    return start


def write_at(path: Path, position: int, array: np.ndarray) -> None:
    """The array's bytes into the file at `position`. Through the file, not a memory map: the pages of a map a
    process writes count in its resident memory, which would then grow with the dataset."""
    data = memoryview(np.ascontiguousarray(array, dtype=np.uint8)).cast("B")
    handle = os.open(path, os.O_WRONLY)
    try:
        while data:  # pwrite may write less than asked
            written = os.pwrite(handle, data, position)
            data, position = data[written:], position + written
    finally:
        os.close(handle)


def read_at(path: Path, position: int, length: int) -> np.ndarray:
    data = bytearray()
    with open(path, "rb") as handle:
        while len(data) < length:
            piece = os.pread(handle.fileno(), length - len(data), position + len(data))
            if not piece:
                raise SegpipeError(f"{path} ends at byte {position + len(data)}, before the sample it should hold")
            data += piece
    return np.frombuffer(data, np.uint8)


@dataclass(frozen=True)
class Slot:
    """Where one sample goes in its split's files, planned from its shape before it is decoded."""

    folder: Path
    shape: tuple[int, int]                   # (height, width) at the working resolution
    image: int                               # byte positions in images.npy,
    mask: int                                # masks.npy
    native_shape: tuple[int, int] | None = None
    native: int | None = None                # and native_masks.npy (the test split)

    def fits(self, mask: np.ndarray, native_mask: np.ndarray | None) -> bool:
        return mask.shape == self.shape and (native_mask is None or native_mask.shape == self.native_shape)

    def write(self, image: np.ndarray, mask: np.ndarray, native_mask: np.ndarray | None = None) -> None:
        write_at(self.folder / "images.npy", self.image, image)
        write_at(self.folder / "masks.npy", self.mask, mask)
        if native_mask is not None:
            write_at(self.folder / "native_masks.npy", self.native, native_mask)

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        (h, w), native = self.shape, None
        image = read_at(self.folder / "images.npy", self.image, 3 * h * w).reshape(h, w, 3)
        mask = read_at(self.folder / "masks.npy", self.mask, h * w).reshape(h, w)
        if self.native is not None:
            nh, nw = self.native_shape
            native = read_at(self.folder / "native_masks.npy", self.native, nh * nw).reshape(nh, nw)
        return image, mask, native


class SplitFiles:
    """One split's flat arrays created at their final length from the planned shape of every sample, so that
    processes can write samples into their slots in any order, with no pixels passing through this one.

    A sample that turns out bad, or whose decoded shape differs from the plan, leaves a hole; close() then
    compacts the split, one sample at a time, into what SplitWriter would have written without it."""

    def __init__(self, root: Path, name: str, shapes: list[tuple[int, int] | None],
                 native_shapes: list[tuple[int, int] | None] | None = None):
        self.folder = root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.native = native_shapes is not None
        pixels = [shape[0] * shape[1] if shape else 0 for shape in shapes]
        native_pixels = [shape[0] * shape[1] if shape else 0 for shape in native_shapes or []]
        image_start = create_flat_array(self.folder / "images.npy", 3 * sum(pixels))
        mask_start = create_flat_array(self.folder / "masks.npy", sum(pixels))
        native_start = create_flat_array(self.folder / "native_masks.npy", sum(native_pixels)) if self.native else 0
        starts, native_starts = np.cumsum([0] + pixels).tolist(), np.cumsum([0] + native_pixels).tolist()
        # None where the shape is unknown (an unreadable header): no place, the sample is written at close().
        self.slots: list[Slot | None] = [
            Slot(self.folder, shape, image_start + 3 * starts[i], mask_start + starts[i],
                 native_shapes[i] if self.native else None, native_start + native_starts[i] if self.native else None)
            if shape else None
            for i, shape in enumerate(shapes)
        ]

    def close(self, rows: list[tuple[int, str, bool]], decode: Callable[[int], tuple]) -> None:
        """Write the index of `rows`, the samples kept, in order: (their index in the plan, id, whether they were
        written into their slot). The arrays (image, mask, native mask) of those that were not come from `decode`."""
        if len(rows) == len(self.slots) and all(placed for _, _, placed in rows):
            slots = [self.slots[i] for i, _, _ in rows]
            write_index(self.folder, [sample_id for _, sample_id, _ in rows], [slot.shape for slot in slots],
                        [slot.native_shape for slot in slots] if self.native else None)
            return
        # Rare (bad files skipped, a header that misled the plan): rewrite the split without its holes.
        staging = self.folder.parent / f".{self.folder.name}.compacted"
        writer = SplitWriter(staging, self.folder.name, native=self.native)
        for index, sample_id, placed in rows:
            writer.append(sample_id, *(self.slots[index].read() if placed else decode(index)))
        writer.close()
        for path in writer.folder.iterdir():
            os.replace(path, self.folder / path.name)
        writer.folder.rmdir()
        staging.rmdir()


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
