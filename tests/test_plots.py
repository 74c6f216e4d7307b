"""`dvc plots show` and `dvc plots diff`: the tables they draw, this project's heatmap
template, and the page that carries vega inline so that the plots render offline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from segpipe.reporting.dvc_plots import confusion_records, per_class_records, row_rates
from tests.conftest import REPO_ROOT
from tests.html_references import external_references
from tests.pipeline_project import copy_project, dvc
from tools.plots_page import PAGE_FILE, offline_page

MATRIX = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
CLASSES = ["bg", "cat", "dog"]


def test_the_confusion_matrix_is_written_row_normalised_one_record_per_cell():
    records = confusion_records(MATRIX, CLASSES)
    assert len(records) == 9
    assert records[0] == {"true_class": "bg", "predicted_class": "bg", "rate": 0.8, "pixels": 8}
    assert records[3] == {"true_class": "cat", "predicted_class": "bg", "rate": 0.25, "pixels": 1}
    for truth in ("bg", "cat"):
        assert sum(r["rate"] for r in records if r["true_class"] == truth) == pytest.approx(1.0)
    assert [r["rate"] for r in records if r["true_class"] == "dog"] == [0.0, 0.0, 0.0]   # no pixels: no division by 0
    assert row_rates(MATRIX)[1].tolist() == [0.25, 0.75, 0.0]


def test_per_class_records_carry_each_class_and_its_pixels():
    per_class = {"bg": {"iou": 0.7, "f1": 0.8, "accuracy": 0.8}, "cat": {"iou": 0.5, "f1": 0.6, "accuracy": 0.75},
                 "dog": {"iou": None, "f1": None, "accuracy": None}}
    assert per_class_records(per_class, MATRIX) == [
        {"class": "bg", "iou": 0.7, "f1": 0.8, "accuracy": 0.8, "pixels": 10},
        {"class": "cat", "iou": 0.5, "f1": 0.6, "accuracy": 0.75, "pixels": 4},
        {"class": "dog", "iou": None, "f1": None, "accuracy": None, "pixels": 0}]


def test_dvc_fills_the_heatmap_template_with_the_records():
    from dvc_render.vega import VegaRenderer

    records = [{**r, "rev": "workspace"} for r in confusion_records(MATRIX, CLASSES)]
    renderer = VegaRenderer(records, "confusion", template="heatmap", template_dir=str(REPO_ROOT / ".dvc/plots"),
                            x="predicted_class", y="true_class", x_label="predicted", y_label="true")
    spec = renderer.get_filled_template()
    assert spec["data"]["values"] == records
    assert spec["spec"]["encoding"]["x"]["field"] == "predicted_class"
    assert spec["spec"]["encoding"]["y"] == {"field": "true_class", "type": "nominal", "sort": None, "title": "true"}
    assert [layer["mark"] for layer in spec["spec"]["layer"]] == ["rect", "text"]
    assert "<DVC_METRIC" not in json.dumps(spec)


def test_the_committed_page_carries_vega_inline_and_is_up_to_date():
    page = (REPO_ROOT / PAGE_FILE).read_text(encoding="utf8")
    assert page == offline_page(), "regenerate it: python -m tools.plots_page"
    assert "{plot_divs}" in page and "{scripts}" not in page   # no {scripts}: DVC adds no CDN tags
    assert "window.vegaEmbed=" in page and external_references(page) == []


def declared_plots() -> list[str]:
    """The ids of dvc.yaml's plots: a titled definition's name, or an image folder's path."""
    return [next(iter(p)) if isinstance(p, dict) else p for p in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]]


@pytest.mark.e2e
def test_dvc_plots_show_writes_every_declared_plot_offline(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")  # set up as this repository is (tests/pipeline_project.py)
    result = dvc("plots", "show", "-o", str(tmp_path / "show"), cwd=project)
    assert "failed" not in (result.stdout + result.stderr).lower()
    page = (tmp_path / "show/index.html").read_text()
    assert "cdn.jsdelivr" not in page and external_references(page) == []

    plots = json.loads(dvc("plots", "show", "--json", cwd=project).stdout)
    assert "errors" not in plots
    ids = [i for i in declared_plots() if i != "reports/predictions"]
    images = sorted(i for i in plots["data"] if i.startswith("reports/predictions/"))
    test_ids = json.loads((project / "data/processed/test/ids.json").read_text())
    assert images == [f"reports/predictions/{i}.png" for i in test_ids[:2]]
    assert sorted(plots["data"]) == sorted(ids + images)
    for plot_id in ids:   # each drawn from data, each a div on the page
        (plot,) = plots["data"][plot_id]
        assert plot["type"] == "vega" and plot["content"]["data"]["values"], plot_id
        assert f'id = "{re.sub(r"[^a-zA-Z0-9]", "_", plot_id)}"' in page
    for image in images:
        assert (tmp_path / "show/static" / f"workspace_{image.replace('/', '_')}").stat().st_size > 0
