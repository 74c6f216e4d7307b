from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# pytest --cpu-report: each test module's processor time, its child processes' included.
pytest_plugins = ["tests.cpu_report"]


# The order make test's two workers are handed work in (xdist_group groups whole). The longest
# group first, so that no worker ends alone with it; then tests that need no baseline run, which
# keep the second worker busy while the first makes it; then the other long ones, the rest after.
HANDED_OUT_FIRST = ["tests/test_shared_stack.py", "tests/test_tracking.py", "tests/test_export.py",
                    "tests/test_models_losses.py", "tests/test_stage_deps.py", "tests/test_resume.py",
                    "tests/test_team.py", "tests/test_smp_downstream.py", "tests/test_distributed.py",
                    "tests/test_pipeline.py", "tests/test_weizmann.py"]


def pytest_collection_modifyitems(items):
    rank = {module: i for i, module in enumerate(HANDED_OUT_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    _a_share_of_the_cores_each()
    _refuse_an_xdist_that_does_not_group(config)


def _a_share_of_the_cores_each() -> None:
    """Under make test's workers, each worker and every process its tests start (they inherit
    OMP_NUM_THREADS) computes on its share of the cores. PyTorch's default, a thread per core in every
    process, oversubscribes them: a stage's OpenMP threads then wait on each other whenever another
    worker holds a core (a tiny training stage beside another job: 26-30 s with two threads, 11 s with
    one). A thread count the user set is kept."""
    import sys

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    from segpipe.data.preprocess import worker_count

    threads = max(1, worker_count(0) // workers)  # worker_count(0): one per core this process may use
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported already (by a plugin): it read the variable then
        sys.modules["torch"].set_num_threads(threads)


def _refuse_an_xdist_that_does_not_group(config) -> None:
    """Stop, rather than run each module's shared servers and runs once per worker, where
    pytest-xdist's loadgroup does not group: its mark travels in the node id, which pytest 9.2
    no longer lets it change (pytest-dev/pytest-xdist#1386)."""
    from packaging.version import Version

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2.dev0"):
        raise pytest.UsageError(f"--dist loadgroup does not group under pytest {pytest.__version__} "
                                "(pytest-dev/pytest-xdist#1386): install the pytest that pyproject.toml's "
                                "test extra names (pip install -e '.[test]')")


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
    commit, its results committed. Tests that change it work on a copy; the others
    only read it, so xdist's workers share one run (the first to ask makes it)."""
    from filelock import FileLock

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: this session's own folder
        return make_baseline(tmp_path_factory.mktemp("baseline"))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above every worker's folder
    with FileLock(shared / "baseline.lock"):
        folder = shared / "baseline"
        if not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed to make it left
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
