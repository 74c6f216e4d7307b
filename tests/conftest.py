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
def baseline(tmp_path_factory) -> Path:
    """One tiny pipeline run that the end-to-end tests share: `dvc repro` on a clean
    commit, its results committed. Tests that change it work on a copy."""
    from tests.pipeline_project import create_project, dvc, git_commit, tiny_params

    root = create_project(tmp_path_factory.mktemp("baseline") / "project", tiny_params())
    first = dvc("repro", cwd=root)
    (root.parent / "first_repro.log").write_text(first.stdout + first.stderr)
    git_commit(root, "baseline results")
    return root
