"""Evaluation: confusion matrices and the scores computed from them, scoring a
model on a split, every test image's own matrix, and bootstrap intervals."""
