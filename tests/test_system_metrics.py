"""What the machine did, in MLflow: the train run carries MLflow's system metrics (CPU,
memory, and on an NVIDIA machine with nvidia-ml-py each GPU's utilisation and memory),
and its summary the throughput and, on a GPU, the peak GPU memory."""

from __future__ import annotations

import os
import time

from mlflow.tracking import MlflowClient

from segpipe.tracking.metric_names import training_summary_metrics
from segpipe.tracking.runs import SYSTEM_METRICS_SECONDS, TrainingRun
from segpipe.tracking.store import tracking_uri

INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


def test_a_cpu_training_run_carries_system_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # MLflow logs only whole sampling intervals; a user's own interval wins over the run's 5 s.
    monkeypatch.setenv(INTERVAL, "0.2")
    run = TrainingRun("segpipe", {}, {}, True, "busy")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # some CPU work for the samples to see
        sum(i * i for i in range(10_000))
    run.log_metrics(training_summary_metrics(0.5, 2.0, 123.0))
    run.finish()
    client = MlflowClient(tracking_uri())
    metrics = client.get_run(run.run_id).data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, sorted(metrics)
    assert len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) >= 2
    assert 0 < metrics["system/system_memory_usage_megabytes"]
    # The summary: throughput always, peak GPU memory only when there was a GPU.
    assert metrics["speed/train_images_per_second"] == 123.0 and "speed/peak_gpu_memory_gib" not in metrics
    assert os.environ[INTERVAL] == "0.2"


def test_the_run_samples_every_5_seconds_and_leaves_no_setting_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv(INTERVAL, raising=False)
    from mlflow.system_metrics import system_metrics_monitor

    seen = []
    real = system_metrics_monitor.SystemMetricsMonitor.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.sampling_interval)
    monkeypatch.setattr(system_metrics_monitor.SystemMetricsMonitor, "__init__", spy)
    run = TrainingRun("segpipe", {}, {}, True, "quick")
    run.finish()
    assert seen == [SYSTEM_METRICS_SECONDS] and INTERVAL not in os.environ


def test_summary_metrics_name_throughput_and_peak_gpu_memory():
    assert training_summary_metrics(0.7, 12.5, 80.0, 3.25) == {
        "best_val_miou": 0.7, "speed/train_seconds": 12.5, "speed/train_images_per_second": 80.0,
        "speed/peak_gpu_memory_gib": 3.25}
