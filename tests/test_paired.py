"""The paired comparison of two runs (and of two groups of seeds): hand-computed cases with known answers,
the refusal of runs scored on different test data, and `segpipe compare A B` / `segpipe promote` against a
real MLflow store and model registry on SQLite."""

from __future__ import annotations

import re

import numpy as np
import pytest

from segpipe.errors import SegpipeError
from segpipe.evaluation.intervals import resample_indices
from segpipe.evaluation.paired import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    ScoredRun,
    check_same_test_data,
    compare_groups,
    compare_paired,
)
from segpipe.evaluation.per_image import PerImageResults
from tests.test_tracking import mlflow_server  # noqa: F401  (the fixture: a real `mlflow server` on 127.0.0.1)

CLASSES = ["background", "shape"]
IDS = ["img0", "img1", "img2"]


def results(*matrices, ids=IDS, classes=CLASSES) -> PerImageResults:
    return PerImageResults(list(ids), list(classes), np.array(matrices, dtype=np.int64))


# Every image: 4 background and 4 shape pixels. A confuses one of each; B is right everywhere.
A = results([[3, 1], [1, 3]], [[3, 1], [1, 3]], [[3, 1], [1, 3]])
PERFECT = results([[4, 0], [0, 4]], [[4, 0], [0, 4]], [[4, 0], [0, 4]])


def test_identical_runs_differ_by_exactly_zero_with_no_detectable_difference():
    comparison = compare_paired(A, A, samples=200)
    for difference in comparison.differences:
        assert difference.difference == 0.0
        assert (difference.interval.low, difference.interval.high) == (0.0, 0.0)
        assert difference.verdict == NO_DIFFERENCE
    assert [d.metric for d in comparison.differences] == ["miou", "f1", "pixel_accuracy", "mean_class_accuracy",
                                                          "iou/background", "iou/shape"]


def test_a_run_better_on_every_image_is_better_by_the_hand_computed_amount():
    # Summed A: [[9, 3], [3, 9]]: IoU 9 / (12 + 12 - 9) = 0.6 per class; F1 18 / 24 = 0.75; accuracy 18 / 24 = 0.75.
    comparison = compare_paired(A, PERFECT, samples=200)
    found = {d.metric: (d.a, d.b, d.difference, d.interval.low, d.interval.high, d.verdict) for d in comparison.differences}
    assert found["miou"] == (0.6, 1.0, 0.4, 0.4, 0.4, BETTER)
    assert found["f1"] == (0.75, 1.0, 0.25, 0.25, 0.25, BETTER)
    assert found["pixel_accuracy"] == (0.75, 1.0, 0.25, 0.25, 0.25, BETTER)
    assert found["iou/shape"] == (0.6, 1.0, 0.4, 0.4, 0.4, BETTER)
    assert compare_paired(PERFECT, A, samples=200).headline.verdict == WORSE


def test_each_resample_scores_both_runs_on_the_same_images_from_their_summed_matrices():
    a = results([[5, 0], [0, 5]], [[2, 2], [2, 2]], [[4, 1], [0, 3]])
    b = results([[4, 1], [1, 4]], [[3, 1], [1, 3]], [[5, 0], [0, 3]])
    comparison = compare_paired(a, b, samples=1, seed=7)
    drawn = resample_indices(3, 1, seed=7)[0]

    def miou(matrix):
        iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
        return iou.mean()

    expected = miou(b.matrices[drawn].sum(0)) - miou(a.matrices[drawn].sum(0))
    assert comparison.headline.interval.low == pytest.approx(expected, abs=2e-6)
    # The point difference is the two runs' full scores: A [[11, 3], [2, 10]], B [[12, 2], [2, 10]].
    assert comparison.headline.difference == pytest.approx(miou(np.array([[12, 2], [2, 10]]))
                                                           - miou(np.array([[11, 3], [2, 10]])), abs=2e-6)


def test_a_run_better_on_half_the_images_and_worse_on_the_others_is_no_detectable_difference():
    good, bad = [[8, 0], [0, 8]], [[6, 2], [2, 6]]
    a = results(good, bad, good, bad, ids=[f"i{k}" for k in range(4)])
    b = results(bad, good, bad, good, ids=[f"i{k}" for k in range(4)])
    comparison = compare_paired(a, b, samples=500)
    assert comparison.headline.difference == 0.0
    assert comparison.headline.interval.low < 0 < comparison.headline.interval.high
    assert comparison.headline.verdict == NO_DIFFERENCE


def test_groups_of_seeds_give_mean_and_std_and_resample_the_seeds():
    lucky = results([[4, 0], [0, 4]], [[4, 0], [0, 4]], [[4, 0], [0, 4]])
    # Group A: seeds scoring mIoU 0.6 and 1.0 (mean 0.8, std 0.2828); group B: two runs of 1.0.
    comparison = compare_groups([A, lucky], [PERFECT, PERFECT], samples=400)
    headline = comparison.headline
    assert (round(headline.a, 6), round(headline.a_std, 4), headline.b, headline.b_std) == (0.8, 0.2828, 1.0, 0.0)
    assert headline.difference == pytest.approx(0.2)
    # A resample that draws the lucky seed twice for A shows no difference, so 0 is inside the interval.
    assert headline.interval.low == 0.0 and headline.interval.high == pytest.approx(0.4)
    assert headline.verdict == NO_DIFFERENCE
    assert comparison.runs_a == 2 and "differ only in train.seed" in comparison.note()


def test_runs_on_different_test_data_are_refused_with_what_differs():
    other_images = results(*A.matrices, ids=["img0", "img1", "img9"])
    with pytest.raises(SegpipeError, match=r"the test images \(3 vs 3: 1 only in A \(e.g. img2\), 1 only in B "
                                           r"\(e.g. img9\)\)"):
        check_same_test_data([ScoredRun("A", "abc.dir", A), ScoredRun("B", "abc.dir", other_images)])
    other_classes = results(*A.matrices, classes=["background", "circle"])
    with pytest.raises(SegpipeError, match="the classes \\(A: background, shape; B: background, circle\\)"):
        check_same_test_data([ScoredRun("A", None, A), ScoredRun("B", None, other_classes)])
    with pytest.raises(SegpipeError, match="the processed data \\(data_processed_dvc_md5 abc.dir in A, def.dir in B\\)"):
        check_same_test_data([ScoredRun("A", "abc.dir", A), ScoredRun("B", "def.dir", PERFECT)])
    check_same_test_data([ScoredRun("A", "abc.dir", A), ScoredRun("B", "abc.dir", PERFECT)])   # the same data passes


# --- against a real MLflow store and model registry (SQLite) --------------------------------------------------------

EXPERIMENT = "paired"


@pytest.fixture
def store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "mlruns").as_uri())
    return client


def row(out: str, label: str) -> list[str]:
    """The printed table's row for a metric, cell by cell."""
    line = next(line for line in out.splitlines() if line.startswith(label + "  "))
    return re.split(r"\s{2,}", line.strip())


def logged_run(client, tmp_path, name: str, per_image: PerImageResults, seed: int = 0, lr: float = 0.01,
               data_md5: str = "abc.dir", register: str | None = None) -> str:
    """A run as train and evaluate leave it: params, lineage tag, test mIoU and metrics/per_image.npz."""
    from segpipe.evaluation.metrics import scores

    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(experiment, run_name=name, tags={"data_processed_dvc_md5": data_md5, "git_commit": "c0"})
    run_id = run.info.run_id
    client.log_param(run_id, "train.seed", seed)
    client.log_param(run_id, "train.lr", lr)
    client.log_metric(run_id, "test_miou", scores(per_image.matrices.sum(0), per_image.classes)["miou"])
    folder = tmp_path / name / "metrics"
    folder.mkdir(parents=True)
    per_image.save(folder / "per_image.npz")
    client.log_artifact(run_id, str(folder / "per_image.npz"), artifact_path="metrics")
    client.set_terminated(run_id)
    if register:
        if not client.search_registered_models(f"name = '{register}'"):
            client.create_registered_model(register)
        client.create_model_version(register, source=f"runs:/{run_id}/model", run_id=run_id)
    return run_id


def test_segpipe_compare_a_b_prints_the_paired_differences_of_two_mlflow_runs(store, tmp_path, capsys):
    from segpipe.cli import main

    run_a = logged_run(store, tmp_path, "run-a", A)
    logged_run(store, tmp_path, "run-b", PERFECT)
    assert main(["compare", "--experiment", EXPERIMENT, run_a, "run-b", "--samples", "100"]) == 0
    out = capsys.readouterr().out
    assert f"A: run-a (MLflow run {run_a})" in out
    assert "test data: 3 images, classes background, shape, data_processed_dvc_md5 abc.dir" in out
    assert row(out, "mIoU") == ["mIoU", "0.6000", "1.0000", "+0.4000", "+0.4000 … +0.4000", "better"]
    assert row(out, "F1 (Dice)") == ["F1 (Dice)", "0.7500", "1.0000", "+0.2500", "+0.2500 … +0.2500", "better"]
    assert row(out, "IoU background") == ["IoU background", "0.6000", "1.0000", "+0.4000", "+0.4000 … +0.4000", "better"]
    assert "B vs A in test mIoU: better at 95%." in out


def test_segpipe_compare_refuses_runs_on_other_processed_data(store, tmp_path, capsys):
    from segpipe.cli import main

    logged_run(store, tmp_path, "run-a", A)
    logged_run(store, tmp_path, "run-b", PERFECT, data_md5="def.dir")
    assert main(["compare", "--experiment", EXPERIMENT, "run-a", "run-b"]) == 2
    assert ("run-a and run-b were scored on different test data, so their scores cannot be paired: the processed data "
            "(data_processed_dvc_md5 abc.dir in run-a, def.dir in run-b)") in capsys.readouterr().err


def test_a_run_without_per_image_results_is_named(store, tmp_path, capsys):
    from segpipe.cli import main

    logged_run(store, tmp_path, "run-a", A)
    experiment = store.get_experiment_by_name(EXPERIMENT).experiment_id
    old = store.create_run(experiment, run_name="old-run").info.run_id
    assert main(["compare", "--experiment", EXPERIMENT, "run-a", "old-run"]) == 2
    assert f"run old-run ({old}) has no metrics/per_image.npz artifact" in capsys.readouterr().err


def test_seed_groups_in_the_leaderboard_and_the_paired_comparison(store, tmp_path, capsys):
    from segpipe.cli import main

    lucky = results([[4, 0], [0, 4]], [[4, 0], [0, 4]], [[4, 0], [0, 4]])
    logged_run(store, tmp_path, "lr1-s0", A, seed=0, lr=0.01)
    logged_run(store, tmp_path, "lr1-s1", lucky, seed=1, lr=0.01)
    logged_run(store, tmp_path, "lr2-s0", PERFECT, seed=0, lr=0.02)
    logged_run(store, tmp_path, "lr2-s1", PERFECT, seed=1, lr=0.02)
    assert main(["compare", "--experiment", EXPERIMENT, "--group-seeds", "--params", "train.lr", "--metrics",
                 "test_miou"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["2", "0,1"] and table[1].split()[-4:] == ["0.02", "1.0000", "±", "0.0000"]
    assert table[2].split()[-3:] == ["0.8000", "±", "0.2828"]
    assert main(["compare", "--experiment", EXPERIMENT, "lr1-s0", "lr2-s1", "--seeds", "--samples", "400"]) == 0
    out = capsys.readouterr().out
    assert "A: lr1-s0 (MLflow run" in out and "2 seeds: 0, 1)" in out
    assert row(out, "mIoU") == ["mIoU", "0.8000 ± 0.2828", "1.0000 ± 0.0000", "+0.2000", "+0.0000 … +0.4000",
                                "no detectable difference"]


def test_champion_moves_only_to_a_better_model_and_the_version_carries_the_comparison(store, tmp_path, capsys):
    from segpipe.cli import main

    worse = results([[2, 2], [2, 2]], [[2, 2], [2, 2]], [[2, 2], [2, 2]])
    first = logged_run(store, tmp_path, "first", A, register="segmenter")
    logged_run(store, tmp_path, "worse", worse, register="segmenter")
    logged_run(store, tmp_path, "best", PERFECT, register="segmenter")
    logged_run(store, tmp_path, "elsewhere", PERFECT, data_md5="def.dir", register="segmenter")
    promote = ["promote", "--experiment", EXPERIMENT, "--name", "segmenter", "--samples", "100"]

    assert main([*promote, first]) == 0
    assert str(store.get_model_version_by_alias("segmenter", "champion").version) == "1"
    assert "version 1 (first) is the first champion: models:/segmenter@champion" in capsys.readouterr().out

    assert main([*promote, "worse"]) == 1     # mIoU 1/3 against 0.6: the alias stays
    out = capsys.readouterr().out
    assert "not promoted: worse (segmenter version 2) is not better than the champion (version 1, first) in test mIoU: " \
           "worse, B − A -0.2667, 95% CI -0.2667 … -0.2667; the alias stays on version 1" in out
    assert row(out, "mIoU") == ["mIoU", "0.6000", "0.3333", "-0.2667", "-0.2667 … -0.2667", "worse"]
    assert str(store.get_model_version_by_alias("segmenter", "champion").version) == "1"

    assert main([*promote, "elsewhere"]) == 2   # other test data: refused, never compared
    assert "different test data" in capsys.readouterr().err
    assert str(store.get_model_version_by_alias("segmenter", "champion").version) == "1"

    assert main([*promote, "best"]) == 0
    assert "promoted: models:/segmenter@champion is now version 3 (best), better than version 1 in test mIoU by +0.4000" \
        in capsys.readouterr().out
    version = store.get_model_version_by_alias("segmenter", "champion")
    assert str(version.version) == "3"
    tags = version.tags
    assert (tags["segpipe.champion.previous_version"], tags["segpipe.champion.compared_with_run"]) == ("1", first)
    assert (tags["segpipe.champion.verdict"], tags["segpipe.champion.miou_difference"]) == ("better", "0.400000")
    assert (tags["segpipe.champion.miou_ci95_low"], tags["segpipe.champion.miou_ci95_high"]) == ("0.400000", "0.400000")
    assert (tags["segpipe.champion.test_data_md5"], tags["segpipe.champion.test_images"]) == ("abc.dir", "3")
    assert main([*promote, "best"]) == 0
    assert "best is already the champion (segmenter version 3)" in capsys.readouterr().out


def test_the_baseline_is_the_run_committed_beside_the_baseline_model_and_other_test_data_is_a_reason(store, tmp_path):
    import json
    import subprocess

    from segpipe.reporting.document import baseline_section, render_markdown
    from segpipe.tracking.baseline import compare_with_baseline
    from segpipe.tracking.params import ParamChange, Reference

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    baseline_id = logged_run(store, tmp_path, "baseline-run", A)
    git("init", "-q")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/mlflow_run.json").write_text(json.dumps({"run_id": baseline_id, "run_name": "baseline-run",
                                                                 "experiment": EXPERIMENT, "model_sha256": "x"}))
    git("add", "models/mlflow_run.json")
    git("commit", "-qm", "baseline")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.strip()
    reference = Reference(commit, "the last commit", {"train.lr": 0.01})
    tags = {"data_processed_dvc_md5": "abc.dir"}

    found = compare_with_baseline(store, EXPERIMENT, reference, PERFECT, tags, "current-run", 100, tmp_path)
    assert found.run.run_id == baseline_id and found.comparison.headline.verdict == "better"
    section = render_markdown("r", [baseline_section(found, reference, [ParamChange("train.lr", 0.01, 0.02)])], "f")
    assert (f"A is the model at the last commit (commit {commit[:8]}; MLflow run baseline-run, {baseline_id}); B is "
            "this run. What changed: train.lr: 0.01 → 0.02.") in section
    assert "| mIoU | 0.6000 | 1.0000 | +0.4000 | +0.4000 … +0.4000 | better |" in section
    assert "In test mIoU this run is better than the baseline at 95%" in section

    other = results(*PERFECT.matrices, ids=["img0", "img1", "img7"])
    refused = compare_with_baseline(store, EXPERIMENT, reference, other, tags, "current-run", 100, tmp_path)
    assert refused.comparison is None and refused.absent.startswith(
        "the baseline was scored on other test data: the test images (3 vs 3: 1 only in the baseline (baseline-run)")
    assert compare_with_baseline(store, EXPERIMENT, None, PERFECT, tags, None, 100, tmp_path).absent == (
        "there is no baseline commit (not a git repository, or nothing committed yet)")
    section = render_markdown("r", [baseline_section(refused, reference, [])], "f")
    assert "No comparison with the baseline: the baseline was scored on other test data" in section


def test_compare_and_promote_through_a_real_tracking_server(mlflow_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    # The team's path: REST calls to `mlflow server`, artifacts served by it (model versions come back as strings).
    from mlflow.tracking import MlflowClient

    from segpipe.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server)
    client.create_experiment(EXPERIMENT)
    logged_run(client, tmp_path, "first", A, register="segmenter")
    logged_run(client, tmp_path, "best", PERFECT, register="segmenter")
    assert main(["compare", "--experiment", EXPERIMENT, "first", "best", "--samples", "100"]) == 0
    assert row(capsys.readouterr().out, "mIoU") == ["mIoU", "0.6000", "1.0000", "+0.4000", "+0.4000 … +0.4000", "better"]
    promote = ["promote", "--experiment", EXPERIMENT, "--name", "segmenter", "--samples", "100"]
    assert main([*promote, "first"]) == 0 and main([*promote, "best"]) == 0
    champion = client.get_model_version_by_alias("segmenter", "champion")
    assert str(champion.version) == "2" and champion.tags["segpipe.champion.verdict"] == "better"
    assert main([*promote, "first"]) == 1   # the old champion is not better than the new one: the alias stays
    assert str(client.get_model_version_by_alias("segmenter", "champion").version) == "2"


class _Refusing:
    """A registry client whose alias look-up fails as MLflow's does (an MlflowException carries an error_code)."""

    def __init__(self, code: str):
        self.code = code

    def get_model_version_by_alias(self, name, alias):
        error = RuntimeError(f"{self.code} for {name}@{alias}")
        error.error_code = self.code
        raise error


def test_only_a_missing_alias_counts_as_no_champion_any_other_failure_stops_promote():
    from segpipe.tracking.champion import current_champion

    assert current_champion(_Refusing("RESOURCE_DOES_NOT_EXIST"), "segmenter") is None
    assert current_champion(_Refusing("INVALID_PARAMETER_VALUE"), "segmenter") is None
    # A server that is down or a login refused must not look like "no champion yet" (which promotes without comparing).
    for code in ("TEMPORARILY_UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED"):
        with pytest.raises(SegpipeError, match="cannot read the 'champion' alias of registered model 'segmenter'.*nothing "
                                               "was promoted"):
            current_champion(_Refusing(code), "segmenter")
