"""The file contract between stages: every path a stage reads or writes, in one place.

dvc.yaml names the same paths as deps and outs; DVC runs every stage from the
folder that holds dvc.yaml, so they are relative to the project root."""

from __future__ import annotations

from pathlib import Path

# DVC runs every stage from the folder that holds dvc.yaml: the project root.
PROJECT_ROOT = Path.cwd()
# The validate stage's output, which every other stage depends on: params are checked before DVC removes any outputs.
PARAMS_CHECKED = Path("data/params_checked.txt")
RAW_DIR = Path("data/raw")
# Verified archives, kept outside DVC's outputs so that re-running download never fetches them again.
DOWNLOAD_CACHE = Path("data/downloads")
PROCESSED_DIR = Path("data/processed")
BEST_MODEL = Path("models/model.pt")
RUN_LINK = Path("models/mlflow_run.json")
# Resume state: not a DVC output, so DVC does not delete it before re-running train.
RESUME_DIR = Path("models/resume")
RESUME_STATE = RESUME_DIR / "state.pt"
METRICS_DIR = Path("metrics")
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_HISTORY = METRICS_DIR / "train_history.csv"
EVAL_METRICS = METRICS_DIR / "eval.json"
CONFUSION_MATRIX = METRICS_DIR / "confusion_matrix.json"
REPORTS_DIR = Path("reports")
# evaluate: every test image's own confusion matrix (evaluation/per_image.py), and the tables `dvc plots` draws.
PER_IMAGE = METRICS_DIR / "per_image.npz"
PER_CLASS = METRICS_DIR / "per_class.json"
CONFUSION_NORMALIZED = METRICS_DIR / "confusion_normalized.json"
# report: reports/predictions/<id>.png, a folder of images that dvc.yaml declares as a plot.
PREDICTIONS = REPORTS_DIR / "predictions"
FIGURES = REPORTS_DIR / "figures"
PER_CLASS_TABLE = REPORTS_DIR / "per_class.csv"
