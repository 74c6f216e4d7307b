"""Throwaway copies of the project in temporary git repositories, for end-to-end runs.

Commands run as on a user's machine: no MLflow or DVC settings from the outside,
and Python writes bytecode (PYTHONDONTWRITEBYTECODE, which these machines set,
would hide bytecode landing in a DVC dependency)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

NUM_IMAGES, SIDE = 40, 32


def user_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}  # tests never touch the internet
    return env | (extra or {})


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=user_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check, env)


def start_queue(repo: Path, log: Path, env: dict | None = None, jobs: int = 2) -> None:
    """`dvc queue start -j N`, returning when it does. Its workers keep the streams they were
    given, so a captured output would wait for the whole queue (or for a worker that lingers)."""
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=user_env(env),
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120)


def wait_for_queues(expected: dict[Path, int], timeout: float = 600) -> dict[Path, str]:
    """Wait until each repository has its expected number of finished experiments, then
    return `dvc queue status` of each. Finished experiments are git refs, cheap to count;
    DVC itself is asked only now and then, to catch a failed one early."""
    deadline, asked, statuses = time.monotonic() + timeout, time.monotonic(), {}
    while True:
        done = all(len(dvc_experiment_refs(repo)) >= count for repo, count in expected.items())
        if done or time.monotonic() - asked > 20:
            statuses = {repo: dvc("queue", "status", cwd=repo).stdout for repo in expected}
            asked = time.monotonic()
            if not any("Queued" in s or "Running" in s for s in statuses.values()):
                return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"queues still busy after {timeout} s: {statuses}")
        time.sleep(1)


def dvc_experiment_refs(repo: Path) -> list[str]:
    """refs/exps/<baseline>/<name>: one per finished experiment."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()
    return [ref for ref in refs if not ref.startswith("refs/exps/exec/") and ref.count("/") >= 4]


def failed_experiment_logs(repo: Path, status: str, lines: int = 60) -> str:
    """For an assertion's message: the end of each failed queued experiment's own log (`dvc queue
    logs`) and of the queue's worker logs. `dvc queue status` says only that a task failed, and a
    task that failed while DVC set it up has no log of its own (treeverse/dvc#10814)."""
    tail = lambda text: "\n".join(text.splitlines()[-lines:])  # noqa: E731
    logs = []
    for task in [line.split()[0] for line in status.splitlines() if line.rstrip().endswith("Failed")]:
        result = dvc("queue", "logs", task, cwd=repo, check=False)
        logs.append(f"--- {repo.name}: dvc queue logs {task} ---\n{tail(result.stdout + result.stderr)}")
    if logs:
        for worker in sorted((repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out")):
            logs.append(f"--- {repo.name}: {worker.name} ---\n{tail(worker.read_text(errors='replace'))}")
    return "\n".join(logs)


def git_commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message], root)


def tiny_params() -> dict:
    """The project's params shrunk to seconds: 40 images of 32x32, one epoch, a narrow model."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["shapes"] |= {"num_images": NUM_IMAGES, "image_size": SIDE}
    params["preprocess"]["resize"] = {"by": "shorter_side", "to": SIDE}
    params["model"]["base_channels"] = 4
    params["train"] |= {"epochs": 1, "batch_size": 8}
    params["report"]["num_examples"] = 2
    return params


def set_params(root: Path, **dotted) -> dict:
    """Change params.yaml like `dvc exp run -S a.b=value` does; returns the new params."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in dotted.items():
        *parents, last = key.split(".")
        section = params
        for part in parents:
            section = section[part]
        section[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def create_project(root: Path, params: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("stages", "src"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    dvc("config", "core.analytics", "false", cwd=root)
    dvc("config", "core.check_update", "false", cwd=root)
    # The offline page for `dvc plots` and the heatmap template, as the project has them.
    shutil.copytree(REPO_ROOT / ".dvc/plots", root / ".dvc/plots")
    dvc("config", "plots.html_template", "plots/offline.html", cwd=root)
    git_commit(root, "init")
    return root


def copy_project(source: Path, target: Path, keep_store: bool = False) -> Path:
    """A copy of a project: its git history, DVC cache and outputs; its MLflow store only when asked
    (a store copied along still points at the original's artifacts)."""
    skip = {"tmp"} | (set() if keep_store else {"mlflow.db", "mlflow.db.lock", "mlruns"})
    shutil.copytree(source, target, symlinks=True, ignore=lambda folder, names: [n for n in names if n in skip])
    return target
