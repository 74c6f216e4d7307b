"""The real Weizmann horse photos through the `folder` source and the whole pipeline.

Research-only data: read from ../shared, never copied into the repository;
skipped when ../shared is absent."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import SHARED
from tests.pipeline_project import create_project, dvc, tiny_params

HORSES = SHARED / "datasets" / "weizmann_horse"
SUBSET = 24

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not HORSES.is_dir(), reason=f"{HORSES} is absent (the shared Weizmann horse data)"),
]


def horse_subset(folder):
    """Links to the first SUBSET photos and masks, so the run stays short."""
    for source, name in ((HORSES / "rgb", "images"), (HORSES / "figure_ground", "masks")):
        (folder / name).mkdir(parents=True)
        for path in sorted(source.glob("*.jpg"))[:SUBSET]:
            (folder / name / path.name).symlink_to(path)
    return folder


def test_weizmann_horses_need_the_resize_option_then_run_end_to_end(tmp_path):
    horses = horse_subset(tmp_path / "horses")
    params = tiny_params()
    params["data"]["dataset"] = "folder"
    params["data"]["folder"] |= {
        "images": str(horses / "images"), "masks": str(horses / "masks"),
        "classes": ["background", "horse"], "threshold": 128,
    }
    params["train"]["crop"] = [32, 32]  # the photos keep their aspect ratio at the working resolution
    params["mlflow"]["log_model"] = False  # not what is tested here; seconds per run
    project = create_project(tmp_path / "project", params)

    # The rgb photos are at another resolution than their masks: refused until resize is chosen.
    refused = dvc("repro", cwd=project, check=False)
    assert refused.returncode != 0
    assert "differ in size from their masks" in refused.stderr and "data.folder.resize" in refused.stderr

    params["data"]["folder"]["resize"] = "image_to_mask"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", cwd=project)

    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert manifest["classes"] == ["background", "horse"] and len(manifest["pairs"]) == SUBSET
    summary = json.loads((project / "data/processed/summary.json").read_text())
    assert sum(summary["counts"].values()) == SUBSET
    # Thresholding removed the JPEG noise: only the two classes remain, horses a minority.
    assert 0.05 < summary["class_frequency"]["horse"] < 0.6 and summary["rejected"] == []
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    per_class = json.loads((project / "metrics/per_class.json").read_text())
    assert [c["class"] for c in per_class] == ["background", "horse"]
    assert 0.0 <= evaluation["miou"] <= 1.0
