"""The benchmark harness (benchmarks/, `make bench`) on tiny sizes, so it cannot
rot as the library changes: structure and sanity of what it measures (positive
rates, ratios computed from the measured numbers), never speed."""

from __future__ import annotations

import math

import pytest
import yaml

from benchmarks import table
from benchmarks.dvc_cached import DvcResult, benchmark_params, create_touch_pipeline
from benchmarks.evaluation import measure_evaluation
from benchmarks.photos import HEIGHT, WIDTH, preprocess_photos, write_photos
from benchmarks.preprocessing import measure_preprocess
from benchmarks.project import project_params
from benchmarks.run import parse_args, sizes_from
from benchmarks.timing import Timings, interleaved
from benchmarks.train_loop import TrainLoopResult, measure_train_loop
from segpipe.data.images import read_rgb
from segpipe.device import runtime_for

SIDE, BATCH = 32, 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    raw = write_photos(root / "raw", {"train": 2 * BATCH, "val": 1, "test": 3})
    processed = preprocess_photos(raw, root / "processed", SIDE, project_params().preprocess)
    return raw, processed


def test_photos_are_480x360_with_distinct_pixels(photos):
    raw, _ = photos
    first, ninth = read_rgb(raw.root / raw.pairs[0].image), read_rgb(raw.root / raw.pairs[-1].image)
    assert first.shape == (HEIGHT, WIDTH, 3) and len(raw.pairs) == 12
    assert [p.split for p in raw.pairs].count("test") == 3
    assert (first != ninth).any()


def test_train_loop_comparison_measures_every_variant(photos):
    raw, processed = photos
    runtime = runtime_for("cpu", True, True)
    result = measure_train_loop(raw, processed, project_params(), runtime, BATCH, SIDE, workers=[0], rounds=1)
    assert set(result.timings) == {"bare", "segpipe", "dataloader_0"}
    assert result.images_per_epoch == 2 * BATCH
    assert all(result.rate(v) > 0 and len(t.seconds) == 1 for v, t in result.timings.items())

    rows = table.train_loop_rows(result)
    assert rows[0].ratio == pytest.approx(result.rate("segpipe") / result.rate("bare"))
    assert rows[1].ratio == pytest.approx(result.rate("segpipe") / result.rate("dataloader_0"))
    assert rows[0].met == (rows[0].ratio >= table.LOOP_OVER_BARE)


def test_evaluation_comparison_measures_metric_share(photos):
    _, processed = photos
    result = measure_evaluation(processed, project_params(), runtime_for("cpu", True, True), rounds=1)
    assert result.images == 3
    assert set(result.timings) == {"inference", "evaluate", "native_prediction", "score_test"}
    best = {name: t.best for name, t in result.timings.items()}
    assert all(seconds > 0 for seconds in best.values())
    pairs = [("evaluate", "inference"), ("score_test", "native_prediction"), ("native_prediction", "inference")]
    for (variant, over), row in zip(pairs, table.evaluation_rows(result)):
        assert row.ratio == pytest.approx((best[variant] - best[over]) / best[over])
        assert math.isfinite(row.ratio)


def test_preprocess_comparison_reports_rates_and_peaks_of_a_child_process(tmp_path):
    result = measure_preprocess(images=4, side=SIDE, scale=2, workdir=tmp_path)
    assert (result.small.images, result.large.images) == (4, 8)
    for run in (result.small, result.large):
        assert run.images_per_second > 0
        assert run.process_peak_mb >= run.before_mb > 0
        assert run.growth_mb is None or run.growth_mb >= 0
    assert result.memory_ratio == pytest.approx(result.large.process_peak_mb / result.small.process_peak_mb)
    assert result.one_process.images == 8 and result.cores >= 1
    assert result.one_process.worker_peak_mb is None  # one process: no pool
    if result.cores >= 2:  # the pool's workers, read from their own /proc
        assert result.large.worker_peak_mb > 10  # an interpreter with numpy and PIL loaded
    assert result.speedup == pytest.approx(result.large.images_per_second / result.one_process.images_per_second)
    speed_row = table.preprocess_rows(result)[1]
    assert speed_row.comparison == f"preprocess, every core ({result.cores}) / 1 process"
    assert speed_row.ratio == result.speedup


def test_dvc_floor_is_a_chain_of_touch_stages(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.dvc_cached._init_repository", lambda root: None)  # no git or dvc in a unit test
    stages = yaml.safe_load((create_touch_pipeline(tmp_path / "floor", 5) / "dvc.yaml").read_text())["stages"]
    assert [s["cmd"] for s in stages.values()] == [f"touch out{i}" for i in range(1, 6)]
    assert [s.get("deps") for s in stages.values()] == [None] + [[f"out{i}"] for i in range(1, 5)]
    assert benchmark_params(40, 1)["train"]["epochs"] == 1

    result = DvcResult(5, 60.0, Timings([1.5, 1.2]), Timings([0.8, 0.6]))
    row, = table.dvc_rows(result)
    assert row.ratio == pytest.approx(2.0) and row.met is False


def test_quick_options_and_markdown_table():
    sizes = sizes_from(parse_args(["--quick", "--rounds", "2", "--workers", "0", "1"]))
    assert (sizes.rounds, sizes.dvc_rounds, sizes.workers) == (2, 2, (0, 1))
    rows = table.unmeasured_rows("cuda", "no CUDA device", train=True, workers=(0, 2), evaluation=True)
    assert [r.number for r in rows] == [1, 2, 2, 4, 4]
    assert "| 1 | train loop / bare compute | cuda | unmeasured: no CUDA device |" in table.markdown(rows)


def test_rounds_go_on_until_each_best_is_corroborated():
    noisy = iter([9.0, 1.0, 5.0, 1.05, 7.0])  # warm-up, then a fluke best, then its match
    steady = iter([2.0] * 5)
    timings = interleaved({"noisy": lambda: next(noisy), "steady": lambda: next(steady)}, rounds=2, max_rounds=10)
    assert timings["noisy"].seconds == [1.0, 5.0, 1.05] and timings["noisy"].corroborated
    assert timings["steady"].best == 2.0 and timings["steady"].spread == 1.0
    assert not Timings([1.0, 1.5]).corroborated and not Timings([1.0]).corroborated


def test_the_gpu_training_check_runs_the_engine_and_reports_what_a_gpu_run_needs(photos):
    """benchmarks/gpu_training.py on the CPU: the same engine calls as on a GPU."""
    from argparse import Namespace

    from benchmarks.gpu_training import train_variant

    _, processed = photos
    args = Namespace(epochs=2, batch_size=BATCH, side=SIDE)
    result = train_variant(False, args, project_params(), runtime_for("cpu", True, True), processed)
    assert result["variant"] == "eager" and result["amp"] is None and result["channels_last"] is False
    assert [e["epoch"] for e in result["epochs"]] == [1, 2] and all(e["images"] == 2 * BATCH for e in result["epochs"])
    assert all(math.isfinite(e["loss"]) and math.isfinite(e["val_loss"]) for e in result["epochs"])
    assert result["images_per_second"] > 0 and result["peak_gpu_memory_mib"] is None


def test_the_gpu_training_check_fails_on_a_bad_loss_or_no_learning():
    from benchmarks.gpu_training import problems_of

    epochs = lambda losses, mious: [{"epoch": i + 1, "loss": loss, "val_loss": 1.0, "val_miou": miou}  # noqa: E731
                                    for i, (loss, miou) in enumerate(zip(losses, mious))]
    assert problems_of({"variant": "eager", "epochs": epochs([1.0, 0.5], [0.1, 0.4])}) == []
    assert problems_of({"variant": "eager", "epochs": epochs([1.0, math.nan], [0.1, 0.4])}) == ["eager: epoch 2 loss nan"]
    assert problems_of({"variant": "compiled", "epochs": epochs([1.0, 0.9], [0.3, 0.3])}) == [
        "compiled: validation mIoU did not rise (0.3 -> best 0.3)"]


def test_the_realistic_workload_row_compares_the_loop_with_bare_compute_at_its_size():
    result = TrainLoopResult("cpu", 8, {"segpipe": Timings([2.0, 2.02]), "bare": Timings([1.6, 1.61])})
    row = table.realistic_row(result, "deeplabv3_mobilenet_v3_large, 512x512, batch 8")
    assert row.number == 6 and row.comparison == "train loop / bare compute, deeplabv3_mobilenet_v3_large, 512x512, batch 8"
    assert row.measured == "4.00 vs 5.00 images/s" and row.ratio == pytest.approx(0.8)
    assert (row.target, row.met) == (">= 0.9", False)
    sizes = sizes_from(parse_args(["--only", "realistic", "--realistic-steps", "3", "--realistic-rounds", "2"]))
    assert (sizes.realistic_steps, sizes.realistic_rounds) == (3, 2)
    skipped = table.realistic_unmeasured_row("cuda", "deeplabv3_mobilenet_v3_large, 512x512, batch 16", "no CUDA device")
    assert "| 6 | train loop / bare compute, deeplabv3_mobilenet_v3_large, 512x512, batch 16 | cuda | unmeasured: no CUDA" \
        in table.markdown([skipped])
