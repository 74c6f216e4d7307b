# The two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stages call `python`: the project's environment comes first on PATH. Offline by
# default: no usage telemetry from MLflow or DVC (an explicit setting wins).
WITH_VENV := PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} DVC_NO_ANALYTICS=$${DVC_NO_ANALYTICS:-1}
# This machine's pip configuration lists local indexes that lack some packages; pip warns once per package.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: run test ui venv bench team-server

venv: $(STAMP)

# (Re)install only when the project's requirements change. pip itself first: an old pip (23.x)
# does not finish resolving boto3 beside dvc-s3's aiobotocore; a current one takes seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet -e '.[test]' 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

run: $(STAMP)
	$(WITH_VENV) dvc repro
	@echo
	@echo "Report:    file://$(CURDIR)/reports/report.html  (Markdown: reports/report.md)"
	@echo "Plots:     $(BIN)/dvc plots show  (writes dvc_plots/index.html; opens offline)"
	@# The tracking URI may hold a login: printed with its password replaced by ***.
	@$(BIN)/python -c 'import os; from segpipe.errors import redact; print("MLflow UI: " + redact(os.environ.get("MLFLOW_TRACKING_URI") or "make ui, which prints the runs table URL"))'

# Two workers: tests that share a module-scoped server or run stay on one (xdist_group), handed
# out in the order tests/conftest.py puts them, not by their count of tests.
test: $(STAMP)
	$(WITH_VENV) python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

ui: $(STAMP)
	@$(WITH_VENV) python -m segpipe.tracking.ui sqlite:///$(CURDIR)/mlflow.db http://127.0.0.1:5000
	$(WITH_VENV) mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# Performance comparisons, each printed side by side as ratios from one run (benchmarks/RESULTS.md);
# make bench BENCH_ARGS=--quick for a minute's version.
bench: $(STAMP)
	$(WITH_VENV) python benchmarks/run.py $(BENCH_ARGS)

# A team's stack on this machine, for trying it: PostgreSQL, S3-compatible storage and an MLflow server.
team-server: $(STAMP)
	$(WITH_VENV) python -m tools.team_stack
