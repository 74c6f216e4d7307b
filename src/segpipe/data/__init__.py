"""Datasets: sources that import image/mask pairs, the processed-split store, batch augmentation."""

# Every mask in the pipeline uses this value for "not labelled, do not score".
IGNORE_INDEX = 255
