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
