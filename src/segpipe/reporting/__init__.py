"""The report and what `dvc plots` draws: the document, its figures, mask
overlays, and the tables DVC's plot templates read."""
