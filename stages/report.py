"""report: reports/report.html (self-contained) and reports/report.md with the headline
metrics and their bootstrap confidence intervals, the per-class table, the training
curves, the confusion matrix, the best and worst test images, the dataset, the run's
lineage and what changed, and how it compares with earlier runs in MLflow. Beside
them: reports/predictions/ (overlays that `dvc plots show` displays) and
reports/per_class.csv; all of it goes into the MLflow run."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

import csv
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from segpipe.atomic import atomic_dir, read_json
from segpipe.config import Params, params_digest
from segpipe.data.processed import ProcessedSplit, read_summary
from segpipe.device import runtime_for
from segpipe.errors import SegpipeError
from segpipe.evaluation.intervals import bootstrap_intervals, class_iou_intervals
from segpipe.evaluation.per_image import PerImageResults
from segpipe.models import describe
from segpipe.models.checkpoint import ModelCheckpoint, load_model_checkpoint
from segpipe.models.forward import predict_masks
from segpipe.paths import (
    BEST_MODEL,
    CONFUSION_MATRIX,
    EVAL_METRICS,
    FIGURES,
    PER_CLASS,
    PER_CLASS_TABLE,
    PER_IMAGE,
    PREDICTIONS,
    PROCESSED_DIR,
    PROJECT_ROOT,
    REPORTS_DIR,
    RUN_LINK,
    TRAIN_HISTORY,
    TRAIN_METRICS,
)
from segpipe.reporting.document import (
    Section,
    baseline_section,
    dataset_section,
    examples_section,
    figure_section,
    headline_section,
    history_section,
    lineage_section,
    per_class_section,
    render_html,
    render_markdown,
)
from segpipe.reporting.figures import Example, Figure, confusion_figure, examples_figure, training_curves
from segpipe.reporting.overlay import side_by_side
from segpipe.runner import print_summary, run_stage, stage_params
from segpipe.tracking.baseline import BaselineComparison, compare_with_baseline
from segpipe.tracking.leaderboard import ComparedRun, compare_runs, experiment_runs
from segpipe.tracking.lineage import lineage_tags
from segpipe.tracking.metric_names import interval_metrics
from segpipe.tracking.params import changed_params, describe_changes, loggable_params, reference_params
from segpipe.tracking.runs import ResultsRun, RunLink


@dataclass(frozen=True)
class Results:
    """What train and evaluate wrote."""

    evaluation: dict
    training: dict
    per_class: list[dict]
    confusion: dict
    history: list[dict]
    per_image: PerImageResults

    @classmethod
    def read(cls) -> "Results":
        confusion = read_json(CONFUSION_MATRIX)
        with open(TRAIN_HISTORY, newline="") as handle:
            history = list(csv.DictReader(handle))
        return cls(read_json(EVAL_METRICS), read_json(TRAIN_METRICS), read_json(PER_CLASS), confusion, history,
                   PerImageResults.load(PER_IMAGE, summed=np.array(confusion["matrix"])))


@dataclass(frozen=True)
class Examples:
    best: list[Example]
    worst: list[Example]
    first: list[Example]    # the split's first images: the same in every run, so `dvc plots diff` compares like with like


def predict_examples(params: Params, checkpoint: ModelCheckpoint, per_image: PerImageResults) -> Examples:
    test = ProcessedSplit.load(PROCESSED_DIR, "test")
    if list(test.ids) != per_image.ids:
        raise SegpipeError(f"{PER_IMAGE} lists other test images than {PROCESSED_DIR}/test: re-run the evaluate stage "
                           "(dvc repro evaluate)")
    best, worst = per_image.best_and_worst(params.report.num_examples)
    first = list(range(min(params.report.num_examples, len(test))))
    rows = sorted(set(best + worst + first))
    if not rows:
        return Examples([], [], [])
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    model = checkpoint.build_model(runtime.device, BEST_MODEL)
    masks = predict_masks(model, [test.image(i) for i in rows], checkpoint.data.mean, checkpoint.data.std, runtime)
    miou = per_image.image_mious()
    example = {i: Example(test.ids[i], test.image(i), test.mask(i), mask, miou[i]) for i, mask in zip(rows, masks)}
    return Examples([example[i] for i in best], [example[i] for i in worst], [example[i] for i in first])


def earlier_runs(run: ResultsRun, params: Params) -> list[ComparedRun] | None:
    """This experiment's runs from MLflow; None when tracking is not active."""
    compared = None
    if run.active:
        with run.guard("reading the experiment's runs"):
            runs = experiment_runs(run.mlflow.MlflowClient(), params.mlflow.experiment)
            compared = compare_runs(runs, run.run_id, loggable_params(params))
    return compared if run.active else None


def against_baseline(run: ResultsRun, params: Params, reference, results: Results, tags: dict) -> BaselineComparison:
    """The paired comparison with the model at the baseline commit, or why there is none."""
    baseline = compare_with_baseline(None, params.mlflow.experiment, reference, results.per_image, tags, None, 0,
                                     PROJECT_ROOT)
    if run.active:
        with run.guard("reading the baseline's run"):
            baseline = compare_with_baseline(run.mlflow.MlflowClient(), params.mlflow.experiment, reference,
                                             results.per_image, tags, run.run_id, params.report.bootstrap_samples,
                                             PROJECT_ROOT)
    return baseline


def per_class_with_intervals(results: Results, samples: int) -> list[dict]:
    """The per-class table with each IoU's 95% bootstrap interval (None where undefined or turned off)."""
    classes = results.per_image.classes
    intervals = class_iou_intervals(results.per_image.matrices, classes, samples)
    return [{**row, "iou_ci95_low": getattr(intervals.get(row["class"]), "low", None),
             "iou_ci95_high": getattr(intervals.get(row["class"]), "high", None)} for row in results.per_class]


def write_reports(title: str, sections: list[Section], figures: list[Figure], examples: Examples,
                  per_class: list[dict]) -> None:
    with atomic_dir(REPORTS_DIR) as staging:
        (staging / FIGURES.name).mkdir()
        for figure in figures:
            (staging / FIGURES.name / f"{figure.name}.png").write_bytes(figure.png)
        (staging / PREDICTIONS.name).mkdir()
        for example in examples.first:
            strip = side_by_side(example.image, example.truth, example.prediction)
            Image.fromarray(strip).save(staging / PREDICTIONS.name / f"{example.id}.png")
        with open(staging / PER_CLASS_TABLE.name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(per_class[0]))
            writer.writeheader()
            writer.writerows(per_class)
        (staging / "report.md").write_text(render_markdown(title, sections, FIGURES.name))
        (staging / "report.html").write_text(render_html(title, sections))


def main() -> None:
    params = stage_params()
    results, summary = Results.read(), read_summary(PROCESSED_DIR)
    intervals = bootstrap_intervals(results.per_image.matrices, params.report.bootstrap_samples)
    checkpoint = load_model_checkpoint(BEST_MODEL)
    examples = predict_examples(params, checkpoint, results.per_image)

    # Which run this is, what changed against the commit it started from, how earlier runs did.
    reference = reference_params(PROJECT_ROOT)
    changes = changed_params(loggable_params(params), reference.params) if reference else []
    tags = lineage_tags(PROJECT_ROOT, params_digest(params))
    run = ResultsRun(BEST_MODEL, RUN_LINK, params.mlflow.experiment, params.mlflow.required, loggable_params(params),
                     tags | {"mlflow.note.content": describe_changes(changes, reference)})  # tags of a new run only
    link = RunLink.load(RUN_LINK)

    classes = results.confusion["classes"]
    curves, confusion = training_curves(results.history), confusion_figure(np.array(results.confusion["matrix"]), classes)
    best = examples_figure("best_test_images", "Best test images by mIoU", examples.best, classes) if examples.best else None
    worst = (examples_figure("worst_test_images", "Worst test images by mIoU", examples.worst, classes)
             if examples.worst else None)
    sections = [
        headline_section(results.evaluation, results.training, intervals, params.report.bootstrap_samples),
        per_class_section(results.per_class, summary),
        figure_section(curves),
        figure_section(confusion),
        examples_section(best, worst),
        dataset_section(summary),
        lineage_section(tags, asdict(link) if link else None, run.run_id, reference, changes),
        baseline_section(against_baseline(run, params, reference, results, tags), reference, changes),
        history_section(params.mlflow.experiment, earlier_runs(run, params)),
    ]
    figures = [f for f in (curves, confusion, best, worst) if f is not None]
    title = f"segpipe: {describe(checkpoint.spec)} on {checkpoint.data.dataset}"
    write_reports(title, sections, figures, examples, results.per_class)

    run.log(metrics=interval_metrics(intervals), artifacts={
        "report": [REPORTS_DIR / "report.html", REPORTS_DIR / "report.md", PER_CLASS_TABLE],
        "report/figures": [FIGURES / f"{f.name}.png" for f in figures],
        "report/predictions": [PREDICTIONS / f"{e.id}.png" for e in examples.first],
    })
    run.log_table(per_class_with_intervals(results, params.report.bootstrap_samples), "report/per_class_table.json")
    print_summary("report", out=str(REPORTS_DIR / "report.html"), figures=[f.name for f in figures],
                  predictions=str(PREDICTIONS), bootstrap_samples=params.report.bootstrap_samples)


if __name__ == "__main__":
    run_stage(main)
