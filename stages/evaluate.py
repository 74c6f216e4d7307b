"""evaluate: score the best model on the test split; all metrics come from one confusion
matrix, written beside them so any other reduction can be recomputed."""

from segpipe.atomic import write_json
from segpipe.checkpoint import load_checkpoint, model_from_checkpoint
from segpipe.config import load_params
from segpipe.data.processed import DatasetInfo, ProcessedSplit
from segpipe.device import runtime_for
from segpipe.engine import Batches, evaluate
from segpipe.metrics import scores
from segpipe.stage import BEST_MODEL, CONFUSION_MATRIX, EVAL_METRICS, PROCESSED_DIR, print_summary, run_stage
from segpipe.tracking import log_to_run


def test_metrics_for_mlflow(results: dict) -> dict[str, float]:
    flat = {f"test_{k}": results[k] for k in ("miou", "f1", "pixel_accuracy", "mean_class_accuracy")}
    for name, per_class in results["per_class"].items():
        flat |= {f"test_{metric}_{name}": value for metric, value in per_class.items()}
    return flat


def main() -> None:
    params = load_params()
    checkpoint = load_checkpoint(BEST_MODEL)
    info = DatasetInfo(**checkpoint["data"])
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    model = model_from_checkpoint(checkpoint, runtime.device)
    test = Batches(ProcessedSplit.load(PROCESSED_DIR, "test"), params.evaluate.batch_size, runtime, info.mean, info.std)

    matrix, _ = evaluate(model, test, info.num_classes, info.ignore_index, runtime)
    results = scores(matrix.numpy(), info.classes)

    write_json(EVAL_METRICS, {**results, "test_images": len(test.split), "checkpoint_epoch": checkpoint["epoch"]})
    write_json(CONFUSION_MATRIX, {
        "classes": info.classes, "ignore_index": info.ignore_index,
        "rows": "true class", "columns": "predicted class", "matrix": matrix.numpy().tolist(),
    })
    log_to_run(checkpoint["mlflow_run_id"], params.mlflow.required, metrics=test_metrics_for_mlflow(results),
               artifacts={"metrics": [EVAL_METRICS, CONFUSION_MATRIX]})
    print_summary("evaluate", miou=results["miou"], f1=results["f1"], pixel_accuracy=results["pixel_accuracy"],
                  test_images=len(test.split))


if __name__ == "__main__":
    run_stage(main)
