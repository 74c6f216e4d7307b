"""The report: bootstrap intervals, what a run records and compares, the rendered pages,
and (end to end, on the shared tiny pipeline) the report and the MLflow run it fills."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from segpipe.config import parse_params
from segpipe.errors import SegpipeError
from segpipe.evaluation.intervals import bootstrap_intervals, percentile_interval, resample_indices, resampled_scores
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.per_image import PerImageResults
from segpipe.reporting.document import Section, Table, Text, render_html, render_markdown
from segpipe.reporting.figures import Figure
from segpipe.reporting.overlay import LEGEND_GREY, PALETTE, legend_colours, side_by_side
from segpipe.tracking.leaderboard import RunSummary, against_baseline, compare_runs, leaderboard
from segpipe.tracking.params import MISSING, changed_params, describe_changes, loggable_params, reference_params
from tests.html_references import external_references

PERFECT = np.array([[5, 0], [0, 5]])     # every pixel right
WRONG = np.array([[0, 5], [5, 0]])       # every pixel wrong


# --- bootstrap --------------------------------------------------------------------------


def test_resampled_scores_by_hand():
    per_image = np.stack([PERFECT, WRONG])
    values = resampled_scores(per_image, np.array([[0, 0], [0, 1], [1, 1]]))
    # Both perfect; one of each (summed [[5, 5], [5, 5]]: IoU 5 / 15 per class); both wrong.
    assert values["pixel_accuracy"].tolist() == [1.0, 0.5, 0.0]
    assert values["miou"] == pytest.approx([1.0, 1 / 3, 0.0])
    assert values["f1"] == pytest.approx([1.0, 0.5, 0.0])
    # The central 95% of [0, 0.5, 1] by linear interpolation: 0.05 and 1.95 of the way along.
    interval = percentile_interval(values["pixel_accuracy"], 0.95, 3)
    assert (interval.low, interval.high) == pytest.approx((0.025, 0.975))


def test_identical_images_give_a_zero_width_interval_at_the_point_estimate():
    image = np.array([[30, 2, 1], [4, 20, 0], [0, 3, 9]])
    point = scores(image * 8, ["a", "b", "c"])
    intervals = bootstrap_intervals(np.stack([image] * 8), samples=200)
    for name in ("miou", "f1", "pixel_accuracy", "mean_class_accuracy"):
        assert intervals[name].low == intervals[name].high == pytest.approx(point[name], abs=1e-6)


def test_the_interval_contains_the_point_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    per_image = np.stack([np.diag(rng.integers(50, 100, 3)) + rng.integers(0, 30, (3, 3)) for _ in range(40)])
    point = scores(per_image.sum(axis=0), ["a", "b", "c"])
    intervals = bootstrap_intervals(per_image, samples=500)
    for name, interval in intervals.items():
        assert interval.low < point[name] < interval.high
        assert interval.high - interval.low < 0.2 and interval.samples == 500
    assert bootstrap_intervals(per_image, samples=500) == intervals
    assert bootstrap_intervals(per_image, samples=500, seed=1) != intervals
    assert bootstrap_intervals(per_image, samples=0) == {}


def test_resamples_draw_images_with_replacement():
    indices = resample_indices(5, 1000)
    assert indices.shape == (1000, 5) and indices.min() == 0 and indices.max() == 4
    assert (np.array([len(set(row)) for row in indices]) < 5).mean() > 0.9   # most resamples repeat an image


# --- per-image results ------------------------------------------------------------------


def test_per_image_results_round_trip_and_must_add_up(tmp_path):
    results = PerImageResults(["a", "b", "c"], ["bg", "fg"], np.stack([PERFECT, WRONG, np.array([[9, 1], [0, 0]])]))
    results.save(tmp_path / "per_image.npz")
    first = (tmp_path / "per_image.npz").read_bytes()
    results.save(tmp_path / "per_image.npz")
    assert (tmp_path / "per_image.npz").read_bytes() == first   # same results, same bytes: no needless re-run
    loaded = PerImageResults.load(tmp_path / "per_image.npz", summed=results.matrices.sum(axis=0))
    assert loaded.ids == ["a", "b", "c"] and loaded.classes == ["bg", "fg"]
    assert (loaded.matrices == results.matrices).all()
    with pytest.raises(SegpipeError, match="does not add up to the confusion matrix"):
        PerImageResults.load(tmp_path / "per_image.npz", summed=PERFECT)


def test_best_and_worst_images_by_their_own_miou():
    # mIoU: a 1.0, b 0.0, c 0.45 (IoU 0.9 and 0.0), d none (no labelled pixel, nothing predicted), e 0.5
    matrices = [PERFECT, WRONG, np.array([[9, 1], [0, 0]]), np.zeros((2, 2), int), np.array([[5, 5], [0, 0]])]
    results = PerImageResults(list("abcde"), ["bg", "fg"], np.stack(matrices))
    assert results.image_mious() == pytest.approx([1.0, 0.0, 0.45, None, 0.25])
    assert results.best_and_worst(3) == ([0, 2], [1])
    assert results.best_and_worst(10) == ([0, 2], [1, 4])   # four images have a score: never one twice
    assert results.best_and_worst(0) == ([], [])


# --- what a run records -----------------------------------------------------------------


def test_a_run_logs_only_the_settings_of_its_own_dataset(raw_params):
    shapes = loggable_params(parse_params(raw_params))
    assert shapes["data.shapes.num_images"] == raw_params["data"]["shapes"]["num_images"]
    assert "data.dataset" in shapes and "data.mirror" in shapes and "train.lr" in shapes
    assert not [k for k in shapes if k.startswith(("data.folder.", "data.oxford_pet."))]
    raw_params["data"]["dataset"] = "oxford_pet"
    pets = loggable_params(raw_params)
    assert pets["data.oxford_pet.border"] == "ignore"
    assert not [k for k in pets if k.startswith(("data.folder.", "data.shapes."))]


def test_changed_params_against_a_reference():
    reference = {"train.lr": 0.006, "train.epochs": 30, "data.dataset": "shapes"}
    current = {"train.lr": 0.003, "train.epochs": 30, "data.dataset": "shapes", "model.weights": "none"}
    changes = changed_params(current, reference)
    assert [(c.key, c.before, c.after) for c in changes] == [("train.lr", 0.006, 0.003), ("model.weights", MISSING, "none")]


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_what_changed_reads_the_last_commit_or_the_dvc_baseline(tmp_path, raw_params, monkeypatch):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert reference_params(tmp_path) is None
    assert describe_changes([], None).startswith("No committed params.yaml")
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "first")
    first = git(tmp_path, "rev-parse", "HEAD")
    raw_params["train"]["lr"] = 0.001
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    git(tmp_path, "commit", "-qam", "second")

    current = loggable_params(raw_params)
    last = reference_params(tmp_path)
    assert (last.what, changed_params(current, last.params)) == ("the last commit", [])
    assert describe_changes([], last) == f"Same params as the last commit (commit {last.short})."

    monkeypatch.setenv("DVC_EXP_BASELINE_REV", first)
    baseline = reference_params(tmp_path)
    assert baseline.commit == first and baseline.what == "the DVC experiment's baseline"
    changes = changed_params(current, baseline.params)
    assert describe_changes(changes, baseline) == (
        f"Params changed against the DVC experiment's baseline (commit {first[:8]}):\n\n- `train.lr`: 0.006 → 0.001")


def run(run_id: str, started: int, miou: float | None, **params) -> RunSummary:
    return RunSummary(run_id, f"run-{run_id}", started, "c0ffee", {} if miou is None else {"test_miou": miou},
                      {k.replace("__", "."): str(v) for k, v in params.items()})


def test_earlier_runs_newest_first_with_the_best_and_the_current_one_marked():
    runs = [run("old-best", 1, 0.9, train__lr=0.01), run("a", 2, 0.5), run("b", 3, 0.6), run("failed", 4, None),
            run("me", 5, 0.7, train__lr=0.006)]
    compared = compare_runs(runs, "me", {"train.lr": 0.006}, recent=2)
    assert [c.run.run_id for c in compared] == ["me", "b", "old-best"]   # the best kept although older
    assert [(c.is_current, c.is_best) for c in compared] == [(True, False), (False, False), (False, True)]
    assert compared[2].differences == ["train.lr=0.01"]
    assert compare_runs([run("failed", 1, None)], "x", {}) == []



def test_segpipe_compare_ranks_the_same_runs_the_report_does():
    # One leaderboard: segpipe compare's table and the report's best run come from the same ranking.
    runs = [run("old-best", 1, 0.9, train__lr=0.01), run("a", 2, 0.5, train__lr=0.003), run("failed", 4, None),
            run("me", 5, 0.7, train__lr=0.006)]
    table = leaderboard(runs, ["train.lr"], ["test_miou"], "test_miou")
    assert table["run_id"].tolist() == ["old-best", "me", "a", "failed"]   # best first, no score last
    assert table["train.lr"].tolist()[:3] == ["0.01", "0.006", "0.003"] and table["git_commit"].tolist()[0] == "c0ffee"
    assert [c.run.run_id for c in compare_runs(runs, "me", {}) if c.is_best] == ["old-best"]
    compared = against_baseline(table, "me", ["train.lr"], ["test_miou"])
    assert compared["test_miou vs baseline"].round(6).tolist()[:3] == [0.2, 0.0, -0.2]
    assert compared["params changed"].tolist()[0] == "train.lr: 0.006 -> 0.01"
    with pytest.raises(SegpipeError, match="--baseline nope: no such run"):
        against_baseline(table, "nope", ["train.lr"], ["test_miou"])

# --- colours and pages ------------------------------------------------------------------


def test_the_legend_shows_the_colours_the_overlays_really_have():
    colours = legend_colours(3)
    assert colours[0].tolist() == [LEGEND_GREY] * 3   # background is left unpainted: grey, not the palette's black
    assert colours[2].tolist() == np.round(0.4 * LEGEND_GREY + 0.6 * PALETTE[2].astype(float)).tolist()
    image = np.full((8, 10, 3), 200, np.uint8)
    strip = side_by_side(image, np.zeros((8, 10), np.uint8), np.ones((8, 10), np.uint8), min_height=30, gap=2)
    assert strip.shape == (32, 3 * 40 + 4, 3)   # enlarged 4x (nearest), three panels, two gaps


def test_rendered_pages_escape_text_and_load_nothing():
    figure = Figure("f", "A figure", b"\x89PNG fake")
    sections = [Section("Numbers & <things>", [Text("a < b"), Table(["k", "v"], [["x|y", "1"]], frozenset({0})), figure])]
    page = render_html("Title", sections)
    assert "Numbers &amp; &lt;things&gt;" in page and "<p>a &lt; b</p>" in page and 'class="strong"' in page
    assert "data:image/png;base64," in page and external_references(page) == []
    markdown = render_markdown("Title", sections, "figures")
    assert "| **x\\|y** | **1** |" in markdown and "![A figure](figures/f.png)" in markdown


def test_the_reference_finder_catches_what_a_page_would_fetch():
    page = ('<link href="https://cdn.example/a.css"><script src="//cdn.example/v.js"></script>'
            '<img srcset="x.png 1x, http://e.example/y.png 2x"><div style="background:url(http://e.example/z.png)">'
            '<style>@import "https://e.example/s.css";</style>'
            '<p>see https://vega.github.io in text</p><a href="#local">ok</a><img src="data:image/png;base64,AA">')
    assert external_references(page) == ["https://cdn.example/a.css", "//cdn.example/v.js", "http://e.example/y.png",
                                         "http://e.example/z.png", "https://e.example/s.css"]


# --- end to end, on the shared tiny pipeline ---------------------------------------------


class _Tables(HTMLParser):
    """The rows of every table in a page, as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_json(path: Path):
    return json.loads(path.read_text())


@pytest.mark.e2e
def test_the_report_shows_the_evaluated_numbers_with_their_intervals(baseline):
    page = (baseline / "reports/report.html").read_text()
    assert external_references(page) == []
    parser = _Tables()
    parser.feed(page)
    headline = {row[0]: row[1:] for row in parser.tables[0][1:]}
    evaluation = read_json(baseline / "metrics/eval.json")
    with np.load(baseline / "metrics/per_image.npz") as data:
        expected = bootstrap_intervals(data["matrices"], yaml.safe_load((baseline / "params.yaml").read_text())
                                       ["report"]["bootstrap_samples"])
    for key, label in (("miou", "test mIoU"), ("f1", "test F1 (Dice)"), ("pixel_accuracy", "test pixel accuracy"),
                       ("mean_class_accuracy", "test mean class accuracy")):
        assert headline[label] == [f"{evaluation[key]:.4f}", f"{expected[key].low:.4f} – {expected[key].high:.4f}"]
    assert headline["test mIoU at the working resolution"][0] == f"{evaluation['working_resolution']['miou']:.4f}"

    per_class = parser.tables[1]
    assert per_class[0][:4] == ["class", "IoU", "F1", "accuracy"]
    assert [row[:2] for row in per_class[1:]] == [[c["class"], f"{c['iou']:.4f}"]
                                                  for c in read_json(baseline / "metrics/per_class.json")]
    summary = read_json(baseline / "data/processed/summary.json")
    assert f"{summary['counts']['train']} train, {summary['counts']['val']} val, {summary['counts']['test']} test" in page
    assert "Rejected files: 0." in page and "(leaks): 0." in page
    link = read_json(baseline / "models/mlflow_run.json")
    assert f"{link['run_id']} ({link['run_name']})" in page and "Params: the same as the last commit" in page
    assert "★ " + link["run_name"] in page   # the only run is the best one
    markdown = (baseline / "reports/report.md").read_text()
    assert f"| test mIoU | {evaluation['miou']:.4f} |" in markdown
    for name in ("training_curves", "confusion_matrix", "best_test_images", "worst_test_images"):
        assert f"(figures/{name}.png)" in markdown and (baseline / f"reports/figures/{name}.png").stat().st_size > 0


@pytest.mark.e2e
def test_the_mlflow_run_holds_the_figures_the_table_and_what_changed(baseline):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{baseline / 'mlflow.db'}")
    run_id = read_json(baseline / "models/mlflow_run.json")["run_id"]
    mlrun = client.get_run(run_id)
    assert {a.path for a in client.list_artifacts(run_id, "report/figures")} == {
        f"report/figures/{n}.png" for n in ("training_curves", "confusion_matrix", "best_test_images", "worst_test_images")}
    ids = read_json(baseline / "data/processed/test/ids.json")[:2]
    assert {a.path for a in client.list_artifacts(run_id, "report/predictions")} == {
        f"report/predictions/{i}.png" for i in ids}
    table = Path(client.download_artifacts(run_id, "report/per_class.csv"))
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_class = read_json(baseline / "metrics/per_class.json")
    assert [(r["class"], float(r["iou"]), int(r["pixels"])) for r in rows] == [
        (c["class"], c["iou"], c["pixels"]) for c in per_class]

    init_commit = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=baseline, capture_output=True,
                                 text=True, check=True).stdout.strip()
    assert mlrun.data.tags["mlflow.note.content"] == f"Same params as the last commit (commit {init_commit[:8]})."
    assert "data.shapes.num_images" in mlrun.data.params
    assert not [k for k in mlrun.data.params if k.startswith(("data.folder.", "data.oxford_pet."))]
    metrics = mlrun.data.metrics
    assert metrics["test_ci95/miou_low"] <= metrics["test_miou"] <= metrics["test_ci95/miou_high"]
    assert "test_per_class/iou_background" in metrics and "test_working_res/miou" in metrics
    # The run page lists metrics in the order first logged: the validation mIoU leads (MLflow's system/* metrics,
    # sampled while training runs, have a tab of their own).
    assert [k for k in metrics if not k.startswith("system/")][0] == "val_miou"
