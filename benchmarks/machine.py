"""What a figure was measured on: quoted with every table, since ratios from a
2-core machine shared with other work are not those of a quiet 16-core one."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
import torchvision

from segpipe.data.preprocess import worker_count


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """What `nproc` prints: the cores this process may run on, not the host's total (preprocess's workers: 0)."""
    return worker_count(0)


def load_average() -> str:
    """1-, 5- and 15-minute load: how busy the machine was around the measurement."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def cpu_pressure() -> str:
    """Linux's pressure stall figure: the share of the last 10 and 60 s in which some
    runnable task waited for a CPU (0 on an idle machine; high when others compete)."""
    path = Path("/proc/pressure/cpu")
    if not path.exists():
        return "unknown"
    fields = dict(item.split("=") for item in path.read_text().splitlines()[0].split()[1:])
    return f"{fields['avg10']}% (10 s), {fields['avg60']}% (60 s)"


def describe_machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": usable_cores(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu or "none (CUDA not available)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average_at_start": load_average(),
        "cpu_pressure_at_start": cpu_pressure(),
    }
