from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def raw_params() -> dict:
    """The project's own params.yaml as a plain dict, safe to modify."""
    return copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))


@pytest.fixture
def archive_server():
    from tests.archive_server import ArchiveServer

    server = ArchiveServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, worker_id) -> Path:
    """One tiny pipeline run that the end-to-end tests share: `dvc repro` on a clean
    commit, its results committed. Tests that change it work on a copy; the others
    only read it, so xdist's workers share one run (the first to ask makes it)."""
    from filelock import FileLock

    if worker_id == "master":  # no xdist: this session's own folder
        return make_baseline(tmp_path_factory.mktemp("baseline"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above every worker's folder
    with FileLock(shared / "baseline.lock"):
        folder = shared / "baseline"
        if not (folder / "complete").exists():
            make_baseline(folder)
            (folder / "complete").touch()
    return folder / "project"


def make_baseline(folder: Path) -> Path:
    from tests.pipeline_project import create_project, dvc, git_commit, tiny_params

    root = create_project(folder / "project", tiny_params())
    first = dvc("repro", cwd=root)
    (folder / "first_repro.log").write_text(first.stdout + first.stderr)
    git_commit(root, "baseline results")
    return root
