"""Comparisons end to end, in a real project: the per-image matrices logged with every run, the report's section
against the baseline, `segpipe compare A B` between an experiment and its baseline, and DVC's side of sharing
experiments (`dvc exp push` / `dvc exp pull` through a bare git remote and a local DVC remote)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.pipeline_project import create_project, dvc, git_commit, run, tiny_params

pytestmark = pytest.mark.e2e


def runs_by_name(project: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def segpipe(*args: str, cwd: Path, check: bool = True):
    return run([sys.executable, "-m", "segpipe.cli", *args], cwd, check=check)


def table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith((label + "  ", f"| {label} |")))
    return [cell.strip() for cell in (line.strip("|").split("|") if line.startswith("|") else re.split(r"\s{2,}", line))]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A first run on a clean commit, then an experiment that trains for two epochs."""
    params = tiny_params()
    params["mlflow"]["log_model"] = False   # seconds per training; not what is tested here
    root = create_project(tmp_path_factory.mktemp("comparisons") / "project", params)
    dvc("repro", cwd=root)
    git_commit(root, "baseline results")
    dvc("exp", "run", "-n", "two-epochs", "-S", "train.epochs=2", cwd=root)
    return root


def test_the_first_report_says_why_it_has_no_baseline_and_the_experiments_report_compares_with_it(project):
    runs = runs_by_name(project)
    (first,) = [r for name, r in runs.items() if name != "two-epochs"]
    experiment = runs["two-epochs"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    # Every evaluated run carries its per-image confusion matrices.
    for mlrun in (first, experiment):
        assert "metrics/per_image.npz" in [a.path for a in client.list_artifacts(mlrun.info.run_id, "metrics")]

    baseline_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    report = (project / "reports/report.md").read_text()
    section = report.split("## Against the baseline", 1)[1].split("\n## ", 1)[0]
    assert (f"A is the model at the DVC experiment's baseline (commit {baseline_commit[:8]}; MLflow run "
            f"{first.info.run_name}, {first.info.run_id}); B is this run. What changed: train.epochs: 1 → 2.") in section
    row = table_row(section, "mIoU")
    a, b = first.data.metrics["test_miou"], experiment.data.metrics["test_miou"]
    assert row[:4] == ["mIoU", f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
    low, high = (float(x) for x in row[4].split(" … "))
    verdict = "better" if low > 0 else "worse" if high < 0 else "no detectable difference"
    assert low <= b - a + 1e-4 and high >= b - a - 1e-4 and row[5] == verdict
    assert len([line for line in section.splitlines() if line.startswith("| IoU ")]) == 4   # shapes: background and 3 shapes

    # The first run's report (at the baseline commit) said why it had none.
    first_report = Path(client.download_artifacts(first.info.run_id, "report/report.md", str(project.parent))).read_text()
    assert ("No comparison with the baseline: this run is itself the model at the last commit (commit "
            in first_report)

    # segpipe compare A B gives the same figures, naming the runs by name.
    shown = segpipe("compare", first.info.run_name, "two-epochs", cwd=project).stdout
    assert table_row(shown, "mIoU") == row


def test_a_teammate_pulls_an_experiment_sees_it_and_compares_it_with_their_own_run(project, tmp_path):
    # The model is declared as a DVC artifact of type model.
    script = ("from dvc.repo import Repo; a = Repo('.').artifacts.read()['dvc.yaml']['segmenter']; "
              "print(a.path, a.type, sorted(a.labels))")
    artifacts = run([sys.executable, "-c", script], project).stdout
    assert artifacts.strip() == "models/model.pt model ['pytorch', 'segpipe', 'semantic-segmentation']"

    # The author shares the baseline (git push, dvc push) and the experiment (dvc exp push) through a bare git
    # remote and a local DVC remote.
    remote, store = tmp_path / "remote.git", tmp_path / "dvc-store"
    run(["git", "init", "-q", "--bare", str(remote)], tmp_path)
    run(["git", "remote", "add", "origin", str(remote)], project)
    run(["git", "push", "-q", "origin", "HEAD"], project)
    dvc("remote", "add", "--local", "-d", "shared", str(store), cwd=project)
    dvc("push", "--all-branches", cwd=project)   # the workspace holds the experiment; push the commit's outputs
    dvc("exp", "push", "origin", "two-epochs", cwd=project)

    # A teammate clones, pulls the data and the colleague's experiment, and sees it.
    teammate = tmp_path / "teammate"
    run(["git", "clone", "-q", str(remote), str(teammate)], tmp_path)
    dvc("remote", "add", "--local", "-d", "shared", str(store), cwd=teammate)
    dvc("pull", cwd=teammate)
    assert "two-epochs" not in dvc("exp", "show", "--no-pager", cwd=teammate).stdout
    dvc("exp", "pull", "origin", "two-epochs", cwd=teammate)
    shown = json.loads(dvc("exp", "show", "--json", cwd=teammate).stdout)
    names = [e.get("name") for baseline in shown for e in (baseline.get("experiments") or [])]
    assert "two-epochs" in names

    # Their own run, in their own MLflow store, against the pulled experiment (read from git and the DVC cache).
    dvc("exp", "run", "-n", "mine", "-S", "train.lr=0.02", cwd=teammate)
    compared = segpipe("compare", "mine", "two-epochs", cwd=teammate).stdout
    assert compared.splitlines()[:2] == [
        f"A: mine (MLflow run {runs_by_name(teammate)['mine'].info.run_id})", "B: two-epochs (git/DVC revision)"]
    # The same figures as the author's own comparison of the experiment: B's scores are the experiment's.
    theirs = runs_by_name(project)["two-epochs"].data.metrics["test_miou"]
    assert table_row(compared, "mIoU")[2] == f"{theirs:.4f}"
