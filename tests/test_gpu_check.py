"""benchmarks/gpu_check.sh, the prepared check for a CUDA machine, run on the CPU at toy sizes
(--device cpu --quick): every step it takes on a GPU (the real `dvc repro` with MLflow and model
logging, a `dvc exp run` of a torchvision model, predict, export, the benchmarks) runs here too,
so the script cannot rot while no GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.pipeline_project import REPO_ROOT, user_env

pytestmark = pytest.mark.e2e
SCRIPT = REPO_ROOT / "benchmarks/gpu_check.sh"


def test_the_gpu_check_runs_every_step_on_the_cpu_and_writes_its_summary(tmp_path):
    out = tmp_path / "summary.json"
    env = user_env({"PYTHON": sys.executable, "TMPDIR": str(tmp_path)})
    result = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary["passed"] is True and summary["device"] == "cpu"
    assert list(summary["steps"]) == ["environment", "project", "dvc_repro", "dvc_exp_run", "photos", "predict",
                                      "export", "bench"]
    assert all(step["rc"] == 0 for step in summary["steps"].values())
    assert summary["train"]["device"] == "cpu" and summary["train"]["epochs"] == 1
    assert 0 <= summary["eval"]["miou"] <= 1
    assert len([p for p in summary["predictions"] if p.endswith("_mask.png")]) == 3
    assert summary["onnx_bytes"] > 0
    assert {row["comparison"] for row in summary["bench_rows"]} >= {
        "test metrics (score_test) / prediction at native size"}
    default, experiment = summary["mlflow_runs"]  # the default pipeline's run, then the DeepLabV3 experiment's
    assert default["status"] == experiment["status"] == "FINISHED"
    assert "speed/train_images_per_second" in default["speed"]
    assert not any(name.startswith("segpipe-gpu-check") for name in os.listdir(tmp_path))  # the work folder is gone


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--device", "tpu"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "--device is cuda or cpu, not tpu" in result.stderr
    result = subprocess.run(["bash", str(SCRIPT), "--wheels", str(tmp_path / "none")], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "is not a folder" in result.stderr
