"""evaluate: score the best model on the test split against the original masks at their
own resolution (the headline), and at the working resolution (labelled as such). Every
metric comes from a confusion matrix, written beside them so any other reduction can be
recomputed."""

import _bootstrap  # noqa: F401  (this checkout's src/ first on sys.path)

from segpipe.atomic import write_json
from segpipe.checkpoint import load_model_checkpoint
from segpipe.config import flatten, params_digest
from segpipe.data.processed import DatasetInfo, ProcessedSplit
from segpipe.device import runtime_for
from segpipe.engine import Batches, score_test
from segpipe.metrics import scores
from segpipe.stage import (
    BEST_MODEL, CONFUSION_MATRIX, EVAL_METRICS, PROCESSED_DIR, PROJECT_ROOT, RUN_LINK, print_summary, run_stage, stage_params,
)
from segpipe.tracking import ResultsRun, lineage_tags

HEADLINE = ("miou", "f1", "pixel_accuracy", "mean_class_accuracy")


def test_metrics_for_mlflow(results: dict, working: dict) -> dict[str, float]:
    flat = {f"test_{k}": results[k] for k in HEADLINE}
    flat |= {f"test_working_res_{k}": working[k] for k in HEADLINE}
    for name, per_class in results["per_class"].items():
        flat |= {f"test_{metric}_{name}": value for metric, value in per_class.items()}
    return flat


def main() -> None:
    params = stage_params()
    checkpoint = load_model_checkpoint(BEST_MODEL)
    info = DatasetInfo.load(PROCESSED_DIR)
    checkpoint.check_data(info, BEST_MODEL)
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    model = checkpoint.build_model(runtime.device, BEST_MODEL)
    test = Batches(ProcessedSplit.load(PROCESSED_DIR, "test"), params.evaluate.batch_size, runtime, info.mean, info.std)

    scored = score_test(model, test, info.num_classes, info.ignore_index, runtime)
    results = scores(scored.native.numpy(), info.classes)
    working = scores(scored.working.numpy(), info.classes)

    write_json(EVAL_METRICS, {
        **{k: results[k] for k in HEADLINE}, "resolution": "native (each test mask at its original size)",
        "working_resolution": {k: working[k] for k in HEADLINE},
        "per_class": results["per_class"], "test_images": len(test.split), "checkpoint_epoch": checkpoint.epoch,
    })
    write_json(CONFUSION_MATRIX, {
        "classes": info.classes, "ignore_index": info.ignore_index, "resolution": "native",
        "rows": "true class", "columns": "predicted class", "matrix": scored.native.numpy().tolist(),
    })
    run = ResultsRun(BEST_MODEL, RUN_LINK, params.mlflow.experiment, params.mlflow.required, flatten(params),
                     lineage_tags(PROJECT_ROOT, params_digest(params)))
    run.log(metrics=test_metrics_for_mlflow(results, working), artifacts={"metrics": [EVAL_METRICS, CONFUSION_MATRIX]})
    print_summary("evaluate", miou=results["miou"], f1=results["f1"], pixel_accuracy=results["pixel_accuracy"],
                  working_resolution_miou=working["miou"], test_images=len(test.split))


if __name__ == "__main__":
    run_stage(main)
