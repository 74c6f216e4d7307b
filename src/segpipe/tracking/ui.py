"""`make ui`: the address of the experiment's runs table in the MLflow UI, printed before the UI starts.

    python -m segpipe.tracking.ui STORE_URI UI_ADDRESS

Marks an experiment that segpipe made before it set the experiment kind (store.EXPERIMENT_KIND), so that MLflow 3's
UI opens it on its training runs rather than on the GenAI overview.
"""

from __future__ import annotations

import sys
from pathlib import Path

from segpipe.tracking.store import _quiet_mlflow, mark_training_experiment, runs_table_url


def experiment_name() -> str:
    from segpipe.config import load_params
    from segpipe.errors import SegpipeError

    try:
        return load_params().mlflow.experiment
    except SegpipeError:
        return "segpipe"


def main(argv: list[str]) -> int:
    uri, address = argv
    name = experiment_name()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"MLflow UI: {address} (no runs yet: `make run` first)")
        return 0
    client = _quiet_mlflow().MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        print(f"MLflow UI: {address} (no experiment {name!r} yet: `make run` first)")
        return 0
    mark_training_experiment(client, experiment)
    print(f"MLflow UI, the runs of experiment {name!r}: {runs_table_url(address, experiment.experiment_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
