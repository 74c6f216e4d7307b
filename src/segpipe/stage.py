"""What every DVC stage entry point shares: the file contract between stages,
clean error reporting, and a one-line JSON summary of what the stage did."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from segpipe.errors import SegpipeError

# DVC runs every stage from the folder that holds dvc.yaml: the project root.
PROJECT_ROOT = Path.cwd()
RAW_DIR = Path("data/raw")
# Verified archives, kept outside DVC's outputs so that re-running download never fetches them again.
DOWNLOAD_CACHE = Path("data/downloads")
PROCESSED_DIR = Path("data/processed")
BEST_MODEL = Path("models/model.pt")
LAST_CHECKPOINT = Path("models/last.pt")
METRICS_DIR = Path("metrics")
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_HISTORY = METRICS_DIR / "train_history.csv"
EVAL_METRICS = METRICS_DIR / "eval.json"
CONFUSION_MATRIX = METRICS_DIR / "confusion_matrix.json"
REPORTS_DIR = Path("reports")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a SegpipeError becomes a clear message and exit status 2."""
    try:
        main()
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def print_summary(stage: str, **fields: Any) -> None:
    print(json.dumps({"stage": stage, **fields}), flush=True)
