"""report: reports/report.md and a self-contained reports/report.html with the headline
metrics, per-class table, training curves, confusion matrix and test predictions."""

import _bootstrap  # noqa: F401  (this checkout's src/ first on sys.path)

import csv

import numpy as np

from segpipe.atomic import atomic_dir, read_json
from segpipe.checkpoint import load_model_checkpoint
from segpipe.config import flatten, params_digest
from segpipe.data.processed import ProcessedSplit
from segpipe.device import runtime_for
from segpipe.engine import predict_masks
from segpipe.reporting import confusion_figure, prediction_grid, render_html, render_markdown, training_curves
from segpipe.stage import (
    BEST_MODEL, CONFUSION_MATRIX, EVAL_METRICS, PROCESSED_DIR, PROJECT_ROOT, REPORTS_DIR, RUN_LINK, TRAIN_HISTORY,
    TRAIN_METRICS, print_summary, run_stage, stage_params,
)
from segpipe.tracking import ResultsRun, lineage_tags


def main() -> None:
    params = stage_params()
    evaluation, training = read_json(EVAL_METRICS), read_json(TRAIN_METRICS)
    confusion = read_json(CONFUSION_MATRIX)
    with open(TRAIN_HISTORY, newline="") as handle:
        history = list(csv.DictReader(handle))
    checkpoint = load_model_checkpoint(BEST_MODEL)
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)

    figures = [training_curves(history), confusion_figure(np.array(confusion["matrix"]), confusion["classes"])]
    count = params.report.num_examples
    if count:
        test = ProcessedSplit.load(PROCESSED_DIR, "test")
        rows = range(min(count, len(test)))
        images, masks = [test.image(i) for i in rows], [test.mask(i) for i in rows]
        model = checkpoint.build_model(runtime.device, BEST_MODEL)
        predictions = predict_masks(model, images, checkpoint.data.mean, checkpoint.data.std, runtime)
        figures.append(prediction_grid(images, masks, predictions, test.ids[: len(rows)], confusion["classes"]))

    title = f"segpipe: {checkpoint.spec.name} ({checkpoint.spec.pooling} pooling) on {checkpoint.data.dataset}"
    with atomic_dir(REPORTS_DIR) as staging:
        (staging / "figures").mkdir()
        for figure in figures:
            (staging / "figures" / f"{figure.name}.png").write_bytes(figure.png)
        (staging / "report.md").write_text(render_markdown(title, evaluation, training, figures, "figures"))
        (staging / "report.html").write_text(render_html(title, evaluation, training, figures))

    run = ResultsRun(BEST_MODEL, RUN_LINK, params.mlflow.experiment, params.mlflow.required, flatten(params),
                     lineage_tags(PROJECT_ROOT, params_digest(params)))
    run.log(artifacts={
        "report": [REPORTS_DIR / "report.html", REPORTS_DIR / "report.md"],
        "report/figures": [REPORTS_DIR / "figures" / f"{f.name}.png" for f in figures],
    })
    print_summary("report", out=str(REPORTS_DIR / "report.html"), figures=[f.name for f in figures])


if __name__ == "__main__":
    run_stage(main)
