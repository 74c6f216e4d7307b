"""Preprocess on every core: a pool of processes decodes and resizes, and the output is the
same bytes as one process writes, bad samples and all."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.photos import write_photos
from segpipe.config import PreprocessParams, ResizeParams, SplitParams
from segpipe.data.preprocess import preprocess, worker_count
from segpipe.data.raw import RawDataset
from segpipe.errors import SegpipeError


def prep(workers: int, on_bad_sample: str = "error") -> PreprocessParams:
    return PreprocessParams(resize=ResizeParams(by="shorter_side", to=48), min_side=16, on_bad_sample=on_bad_sample,
                            on_leak="warn", split=SplitParams(seed=0, val_fraction=0.2, test_fraction=0.2), workers=workers)


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_pool_of_processes_writes_the_bytes_one_process_writes(tmp_path):
    raw = write_photos(tmp_path / "raw", {None: 14})
    (raw.root / raw.pairs[3].mask).write_bytes(b"not a png")  # a bad sample, skipped the same way by both
    raw = RawDataset.read(raw.root)
    one = preprocess(raw, prep(1, "skip"), tmp_path / "one")
    pooled = preprocess(raw, prep(3, "skip"), tmp_path / "pooled")
    assert one == pooled and len(one["rejected"]) == 1
    written, written_pooled = files(tmp_path / "one"), files(tmp_path / "pooled")
    assert set(written) >= {"train/images.npy", "test/native_masks.npy", "summary.json"}
    assert written == written_pooled
    assert np.load(tmp_path / "pooled/train/images.npy").size > 0


def test_a_bad_sample_in_a_worker_is_named_as_in_one_process(tmp_path):
    raw = write_photos(tmp_path / "raw", {None: 6})
    (raw.root / raw.pairs[2].image).write_bytes(b"broken")
    raw = RawDataset.read(raw.root)
    with pytest.raises(SegpipeError, match=rf"1 of 6 samples .* are bad:\n  - {raw.pairs[2].id}: .*{raw.pairs[2].image}"):
        preprocess(raw, prep(2), tmp_path / "out")


def test_zero_workers_means_one_per_usable_core():
    assert worker_count(3) == 3
    assert 1 <= worker_count(0) <= (__import__("os").cpu_count() or 1)
