"""evaluate: score the best model on the test split against the original masks at their
own resolution (the headline), and at the working resolution (labelled as such). Every
metric comes from a confusion matrix, written beside them so any other reduction can be
recomputed: the headline in metrics/eval.json (what `dvc metrics show` lists), each class
in metrics/per_class.json, the matrix row-normalised for `dvc plots`, and every test
image's own matrix in metrics/per_image.npz (for the report's rankings and intervals)."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

from segpipe.atomic import write_json
from segpipe.config import params_digest
from segpipe.data.batches import Batches
from segpipe.data.processed import DatasetInfo, ProcessedSplit
from segpipe.device import runtime_for
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.per_image import PerImageResults
from segpipe.evaluation.scoring import score_test
from segpipe.models.checkpoint import load_model_checkpoint
from segpipe.paths import (
    BEST_MODEL,
    CONFUSION_MATRIX,
    CONFUSION_NORMALIZED,
    EVAL_METRICS,
    PER_CLASS,
    PER_IMAGE,
    PROCESSED_DIR,
    PROJECT_ROOT,
    RUN_LINK,
)
from segpipe.reporting.dvc_plots import confusion_records, per_class_records
from segpipe.runner import print_summary, run_stage, stage_params
from segpipe.tracking.lineage import lineage_tags
from segpipe.tracking.metric_names import HEADLINE, test_metrics
from segpipe.tracking.params import loggable_params, what_changed
from segpipe.tracking.runs import ResultsRun


def main() -> None:
    params = stage_params()
    checkpoint = load_model_checkpoint(BEST_MODEL)
    info = DatasetInfo.load(PROCESSED_DIR)
    checkpoint.check_data(info, BEST_MODEL)
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    model = checkpoint.build_model(runtime.device, BEST_MODEL)
    # Normalised as the model was trained: by the data's statistics, or a pretrained backbone's.
    test = Batches(ProcessedSplit.load(PROCESSED_DIR, "test"), params.evaluate.batch_size, runtime, checkpoint.data.mean,
                   checkpoint.data.std)

    scored = score_test(model, test, info.num_classes, info.ignore_index, runtime)
    matrix = scored.native.numpy()
    results = scores(matrix, info.classes)
    working = scores(scored.working.numpy(), info.classes)

    # The headline only, so that `dvc metrics show` stays one table: each class is in PER_CLASS.
    write_json(EVAL_METRICS, {
        **{k: results[k] for k in HEADLINE}, "working_resolution": {k: working[k] for k in HEADLINE},
        "test_images": len(test.split),
    })
    write_json(PER_CLASS, per_class_records(results["per_class"], matrix))
    write_json(CONFUSION_MATRIX, {
        "classes": info.classes, "ignore_index": info.ignore_index, "resolution": "native",
        "rows": "true class", "columns": "predicted class", "matrix": matrix.tolist(),
    })
    write_json(CONFUSION_NORMALIZED, confusion_records(matrix, info.classes))
    PerImageResults(list(test.split.ids), info.classes, scored.per_image).save(PER_IMAGE)

    # The tags name a new run, made only when this store lacks the run that trained the model (a teammate's).
    tags = lineage_tags(PROJECT_ROOT, params_digest(params)) | {"mlflow.note.content": what_changed(params, PROJECT_ROOT)}
    run = ResultsRun(BEST_MODEL, RUN_LINK, params.mlflow.experiment, params.mlflow.required, loggable_params(params), tags)
    run.log(metrics=test_metrics(results, working), artifacts={"metrics": [EVAL_METRICS, CONFUSION_MATRIX, PER_IMAGE]})
    print_summary("evaluate", miou=results["miou"], f1=results["f1"], pixel_accuracy=results["pixel_accuracy"],
                  working_resolution_miou=working["miou"], test_images=len(test.split))


if __name__ == "__main__":
    run_stage(main)
