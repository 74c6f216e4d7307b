"""An invalid param destroys nothing: DVC removes a stage's outputs before it runs the stage,
so the stage used to find its own invalid param only after its outputs were gone
(`dvc exp run -S train.epochs=0` deleted models/model.pt). The validate stage, which every
stage depends on, now stops the run before any stage's outputs are touched.
(docs/RELIABILITY.md lists this case.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.pipeline_project import copy_project, dvc, run, set_params

pytestmark = pytest.mark.e2e

# Every stage's outputs, as dvc.yaml declares them.
OUTPUTS = ("data/raw", "data/processed", "models/model.pt", "models/mlflow_run.json", "metrics", "reports")

# The values that once deleted their stage's outputs, each section's own run; the other sections' bad values share
# one run (the error lists every bad key, and the check is one for the whole file); the names that only a registry
# knows, one run each. With the keys the error must name.
OTHER_SECTIONS = {"data.shapes.num_images": 0, "preprocess.resize.to": 0, "augment.hflip": 2.0, "report.num_examples": -1,
                  "mlflow.experiment": ""}
INVALID = [
    ({"train.epochs": 0, "train.batch_size": 0, "train.crop": [0, 0]}, ["train.epochs", "train.batch_size", "train.crop"]),
    ({"evaluate.batch_size": 0}, ["evaluate.batch_size"]),
    (OTHER_SECTIONS, list(OTHER_SECTIONS)),
    ({"model.name": "no_such_model"}, ["model.name: unknown model 'no_such_model'"]),
    ({"loss.name": "no_such_loss"}, ["loss.name: unknown loss 'no_such_loss'"]),
]


def fingerprint(project: Path) -> dict[str, str]:
    """Every output file's SHA-256, by path."""
    found = {}
    for name in OUTPUTS:
        path = project / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found |= {str(f.relative_to(project)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return found


def test_an_invalid_value_of_any_param_leaves_every_stages_outputs_intact(baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "copy")
    before = fingerprint(project)
    assert {"models/model.pt", "metrics/train.json", "metrics/eval.json", "reports/report.html"} <= set(before)
    params = (project / "params.yaml").read_text()
    for settings, named in INVALID:
        if "train.epochs" in settings:  # as the issue ran it; DVC writes the values into params.yaml itself
            result = dvc("exp", "run", *[a for k, v in settings.items() for a in ("-S", f"{k}={v}".replace(" ", ""))],
                         cwd=project, check=False)
            # A failed `dvc exp run` leaves its -S values in params.yaml (DVC's behaviour; docs/RELIABILITY.md)
            assert "epochs: 0" in (project / "params.yaml").read_text()
        else:
            set_params(project, **settings)
            result = dvc("repro", cwd=project, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{settings} was accepted:\n{output}"
        assert all(key in output for key in named), f"{settings}: the error does not name {named}:\n{output}"
        assert fingerprint(project) == before, f"{settings} changed outputs"
        assert "Running stage 'validate'" in output and "Running stage 'download'" not in output
        run(["git", "checkout", "params.yaml"], project)
    assert (project / "params.yaml").read_text() == params
    # And with the params restored, nothing needs to re-run: the outputs are the baseline's own.
    assert dvc("status", cwd=project).stdout.strip() == "Data and pipelines are up to date."
