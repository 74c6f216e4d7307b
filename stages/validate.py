"""validate: check params.yaml whole (every section, and the named choices: data.dataset, model.name,
loss.name) before any other stage runs, and write data/params_checked.txt, which every other stage
depends on.

DVC removes a stage's outputs before it runs the stage, so a stage that finds its own params invalid
has already lost its outputs (`dvc exp run -S train.epochs=0` used to delete models/model.pt). This
stage runs first whenever any param changes; when it fails, `dvc repro` stops there, before any
other stage's outputs are touched. It writes the same bytes every time, so a change of params
re-runs only the stages that read them, as before."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

from segpipe.atomic import atomic_file
from segpipe.data.sources import SOURCES
from segpipe.distributed import check_sync_batchnorm
from segpipe.models import MODELS, spec_for
from segpipe.models.weights import check_weights_setting
from segpipe.paths import PARAMS_CHECKED
from segpipe.runner import print_summary, run_stage, stage_params
from segpipe.training.losses import LOSSES

CHECKED = ("params.yaml is valid (stages/validate.py). Every stage depends on this file, so that DVC checks the params "
           "before it removes any stage's outputs.\n")


def main() -> None:
    params = stage_params()
    SOURCES.check(params.data.dataset)
    MODELS.check(params.model.name)
    LOSSES.check(params.loss.name)
    # The model section as train will read it: an encoder where one is needed (and known), none where it is not,
    # a weights file that is there, batch norm synchronised only across GPUs.
    spec_for(params.model, num_classes=2)
    if MODELS[params.model.name].uses_encoder:
        from segpipe.models.smp_models import check_encoder  # smp and timm load only for an smp model

        check_encoder(params.model.encoder, params.model.name)
    check_weights_setting(params.model.weights)
    if params.train.nproc > 1:
        check_sync_batchnorm(params.train.sync_batchnorm, "cuda" if params.train.device != "cpu" else "cpu")
    with atomic_file(PARAMS_CHECKED) as handle:
        handle.write(CHECKED)
    print_summary("validate", out=str(PARAMS_CHECKED))


if __name__ == "__main__":
    run_stage(main)
