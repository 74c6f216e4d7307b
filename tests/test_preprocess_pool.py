"""Preprocess on every core: a pool of processes decodes, resizes and writes each pair into its
place in files planned from the headers, and the output is the same bytes as one process writes,
bad samples and misleading headers and all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.photos import write_photos
from segpipe.config import PreprocessParams, ResizeParams, SplitParams
from segpipe.data import preprocess as preprocess_module
from segpipe.data.images import BadImageFile
from segpipe.data.preprocess import preprocess, worker_count
from segpipe.data.processed import ProcessedSplit
from segpipe.data.raw import RawDataset
from segpipe.errors import SegpipeError

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_a_worker_that_cannot_start_stops_the_ones_that_did(tmp_path, monkeypatch):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shut_down = []

    class SecondProcessFails(ProcessPoolExecutor):  # as fork/exec does at a process limit or out of memory
        submitted = 0

        def submit(self, fn, *args, **kwargs):
            SecondProcessFails.submitted += 1
            if SecondProcessFails.submitted == 2:
                raise OSError(11, "Resource temporarily unavailable")
            return super().submit(fn, *args, **kwargs)

        def shutdown(self, *args, **kwargs):
            shut_down.append(self)
            super().shutdown(*args, **kwargs)

    monkeypatch.setattr(preprocess_module, "ProcessPoolExecutor", SecondProcessFails)
    before = set(multiprocessing.active_children())
    raw = write_photos(tmp_path / "raw", {None: 2})
    writer = preprocess_module.PairWriter(raw, preprocess_module.Resize("shorter_side", 48), 16)
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        preprocess_module.PairWriters(writer, workers=3)
    assert len(shut_down) == 1 and SecondProcessFails.submitted == 2
    assert set(multiprocessing.active_children()) <= before  # the first worker is gone too


def test_a_bad_sample_in_a_worker_is_named_as_in_one_process(tmp_path):
    raw = write_photos(tmp_path / "raw", {None: 6})
    (raw.root / raw.pairs[2].image).write_bytes(b"broken")
    raw = RawDataset.read(raw.root)
    with pytest.raises(SegpipeError, match=rf"1 of 6 samples .* are bad:\n  - {raw.pairs[2].id}: .*{raw.pairs[2].image}"):
        preprocess(raw, prep(2), tmp_path / "out")


def test_zero_workers_means_one_per_usable_core():
    assert worker_count(3) == 3
    assert 1 <= worker_count(0) <= (__import__("os").cpu_count() or 1)


def test_a_clean_dataset_is_written_in_place_with_the_same_bytes_on_one_core_or_two(tmp_path):
    raw = write_photos(tmp_path / "raw", {None: 12})
    one = preprocess(raw, prep(1), tmp_path / "one")
    two = preprocess(raw, prep(2), tmp_path / "two")
    assert one == two and not one["rejected"] and sum(one["counts"].values()) == 12
    assert files(tmp_path / "one") == files(tmp_path / "two")
    test = ProcessedSplit.load(tmp_path / "two", "test")
    assert test.native_mask(0).shape == (360, 480) and test.image(0).shape == (48, 64, 3)
    with_header = 128  # the .npy header; the rest is the pixels, no more (no hole, nothing appended)
    assert (tmp_path / "two/test/images.npy").stat().st_size == with_header + len(test) * 48 * 64 * 3


def official(tmp_path) -> RawDataset:
    """Photos with their splits given, so that leaving pairs out changes no other pair's split."""
    return write_photos(tmp_path / "raw", {"train": 8, "val": 3, "test": 3})


def test_holes_of_skipped_files_are_compacted_into_what_a_run_without_them_writes(tmp_path):
    raw = official(tmp_path)
    bad = [raw.pairs[2], raw.pairs[3], raw.pairs[12]]  # two neighbours in train, one in test
    (raw.root / bad[0].image).write_bytes(b"broken")
    (raw.root / bad[1].mask).write_bytes(b"broken")
    (raw.root / bad[2].image).write_bytes((raw.root / bad[2].image).read_bytes()[:2000])  # truncated JPEG
    with_holes = preprocess(raw, prep(2, "skip"), tmp_path / "holes")
    without = preprocess(replace(raw, pairs=[p for p in raw.pairs if p not in bad]), prep(1), tmp_path / "without")
    assert sorted(r["id"] for r in with_holes["rejected"]) == sorted(p.id for p in bad)
    assert with_holes["counts"] == without["counts"] == {"train": 6, "val": 3, "test": 2}
    assert {**with_holes, "rejected": []} == without
    written, reference = files(tmp_path / "holes"), files(tmp_path / "without")
    assert {k: v for k, v in written.items() if k != "summary.json"} == {k: v for k, v in reference.items()
                                                                         if k != "summary.json"}
    assert sorted(p.name for p in (tmp_path / "holes").iterdir()) == ["summary.json", "test", "train", "val"]


def test_a_header_that_misleads_the_plan_costs_nothing_but_time(tmp_path, monkeypatch):
    """The plan comes from the headers; a pair whose decoded size differs (or whose header could not be read
    while the pixels could) is written when its split is compacted, into the same bytes."""
    raw = official(tmp_path)
    honest = preprocess(raw, prep(2), tmp_path / "honest")
    real_size = preprocess_module.image_size
    turned, unreadable = raw.root / raw.pairs[1].image, raw.root / raw.pairs[13].image  # in train, in test

    def misleading(path):
        if path == unreadable:
            raise BadImageFile(f"{path}: unreadable (a header this test pretends is broken)")
        width, height = real_size(path)
        return (height, width) if path == turned else (width, height)

    decoded_again = []
    decode_again = preprocess_module._decode_again
    monkeypatch.setattr(preprocess_module, "image_size", misleading)  # in this process: the plan, not the workers
    monkeypatch.setattr(preprocess_module, "_decode_again", lambda writer, task: decoded_again.append(task.pair.id)
                        or decode_again(writer, task))
    for workers in (1, 2):
        misled = preprocess(raw, prep(workers), tmp_path / f"misled{workers}")
        assert misled == honest
        assert files(tmp_path / f"misled{workers}") == files(tmp_path / "honest")
    assert decoded_again == [raw.pairs[1].id, raw.pairs[13].id] * 2


def test_on_bad_sample_error_names_the_files_and_compacts_nothing(tmp_path, monkeypatch):
    raw = official(tmp_path)
    (raw.root / raw.pairs[5].image).write_bytes(b"broken")
    monkeypatch.setattr(preprocess_module.SplitFiles, "close", lambda *args: pytest.fail("compacted before the check"))
    with pytest.raises(SegpipeError, match=rf"1 of 14 samples .* are bad:\n  - {raw.pairs[5].id}: "):
        preprocess(raw, prep(2), tmp_path / "out")


def test_the_workers_run_neither_the_parents_main_nor_its_imports(tmp_path):
    """A spawned process runs the parent's main again unless told otherwise; a main that imports torch (the benchmark
    harness does) cost each worker seconds. Here the main imports pydantic (through segpipe.config) and notes each
    run of itself: the workers import neither it nor pydantic."""
    script = tmp_path / "main.py"
    script.write_text(f"""
import json, os, sys
import segpipe.config
from segpipe.data.preprocess import PairWriter, PairWriters
from segpipe.data.raw import RawDataset
from segpipe.data.resolution import Resize
with open({str(tmp_path / "runs.txt")!r}, "a") as runs:
    runs.write(f"{{os.getpid()}}\\n")
if __name__ == "__main__":
    writer = PairWriter(RawDataset(root=".", dataset="x", classes=["a"], pairs=[]), Resize("shorter_side", 8), 1)
    with PairWriters(writer, 2) as writers:
        modules = [writers.pool.submit(eval, "sorted(__import__('sys').modules)").result() for _ in range(4)]
    print(json.dumps([sorted({{"torch", "pydantic", "segpipe.config"}} & set(found)) for found in modules]))
""")
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT / "src")}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == [[], [], [], []]
    assert len((tmp_path / "runs.txt").read_text().split()) == 1  # the parent alone ran main.py


def test_one_worker_is_one_core_this_thread_taking_one_pair_after_another(tmp_path, monkeypatch):
    """preprocess.workers: 1, the benchmark's one-process baseline: no pool and no threads."""
    raw = write_photos(tmp_path / "raw", {None: 5})
    callers = []
    write = preprocess_module.PairWriter.__call__
    monkeypatch.setattr(preprocess_module.PairWriter, "__call__",
                        lambda self, task: callers.append((os.getpid(), threading.get_ident())) or write(self, task))
    preprocess(raw, prep(1), tmp_path / "out")
    assert callers == [(os.getpid(), threading.get_ident())] * 5
