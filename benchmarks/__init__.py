"""segpipe's performance harness (issue 10): each comparison is measured side by
side in one run and quoted as a ratio. Entry point: `make bench` (benchmarks/run.py)."""
