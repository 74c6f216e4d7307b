"""segpipe: reproducible semantic segmentation as DVC stages, tracked in MLflow."""

__version__ = "0.1.0"
