"""`segpipe`: what users do outside the DVC graph.

    segpipe predict IMAGE|FOLDER|GLOB ... [--model models/model.pt] [--out predictions] [--probabilities]
    segpipe export [--model models/model.pt] [--out models/model.onnx] [--samples IMAGE ...]
    segpipe compare [--sort test_miou] [--params ...] [--metrics ...] [--baseline RUN_ID] [--out runs.csv|runs.md]
    segpipe compare --group-seeds             (runs that differ only in train.seed: mean ± std)
    segpipe compare A B [--seeds] [--samples 1000]   (paired differences B - A, 95% intervals, verdict)
    segpipe promote RUN [--name REGISTERED_MODEL]     (move models:/NAME@champion only to a better model)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segpipe.errors import SegpipeError, redact
from segpipe.paths import BEST_MODEL
from segpipe.tracking.leaderboard import DEFAULT_METRICS, DEFAULT_PARAMS


def predict_images_command(args) -> int:
    from segpipe.serving.predict import predict_images

    run = predict_images(args.model, args.images, args.out, args.device, args.window, args.overlap, args.batch_size,
                         args.probabilities)
    for path in run.written:
        print(path)
    if run.failed:
        print(f"error: {len(run.failed)} input(s) could not be predicted (the others were):", file=sys.stderr)
        for failure in run.failed:
            print(f"  {failure.error}", file=sys.stderr)
        return 2
    return 0


def export_onnx_command(args) -> None:
    from segpipe.models.checkpoint import load_model_checkpoint
    from segpipe.serving.export import ATOL, RTOL, export_onnx
    from segpipe.serving.inference import photo_inputs

    checkpoint = load_model_checkpoint(args.model)
    report = export_onnx(checkpoint, args.out, photo_inputs(args.samples, checkpoint.data) or None,
                         atol=ATOL if args.atol is None else args.atol, rtol=RTOL if args.rtol is None else args.rtol,
                         source=args.model)
    print(report.summary())


def compare_command(args) -> None:
    import pandas as pd

    from segpipe.tracking.leaderboard import against_baseline, leaderboard, search_runs, seed_summary, write_table

    experiment = args.experiment or _experiment_from_params()
    if args.runs:
        if len(args.runs) != 2:
            raise SegpipeError(f"segpipe compare takes two runs to compare (A B), or none for the leaderboard; got "
                               f"{len(args.runs)}: {' '.join(args.runs)}")
        paired_command(experiment, *args.runs, args.seeds, args.samples)
        return
    client = _client()
    if client is None:
        raise SegpipeError("no MLflow store here yet (mlflow.db): run the pipeline first (make run), or set "
                           "MLFLOW_TRACKING_URI to the team's server")
    if args.group_seeds:
        table = seed_summary(search_runs(client, experiment), args.params, args.metrics, args.sort)
        with pd.option_context("display.max_columns", None, "display.width", 200):
            print(table.to_string(index=False) if not table.empty else f"no evaluated runs in experiment {experiment!r}")
        if args.out:
            write_table(table, args.out)
            print(f"written: {args.out}")
        return
    table = leaderboard(search_runs(client, experiment), args.params, args.metrics, args.sort, args.ascending)
    if args.baseline:
        table = against_baseline(table, args.baseline, args.params, args.metrics)
    if args.limit:
        table = table.head(args.limit)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False) if not table.empty else f"no runs in experiment {experiment!r}")
    if args.out:
        write_table(table, args.out)
        print(f"written: {args.out}")


def _client():
    """An MlflowClient on the project's store, or None when its SQLite file does not exist (a git revision can still be
    compared; opening the client would create an empty store)."""
    from segpipe.tracking.store import _quiet_mlflow, prepare_store, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    # A server must answer, with this login, before any call: MLflow would retry a dead one for minutes, and answer a
    # refused login with a traceback. prepare_store gives back the URI without the login, which MLflow gets apart.
    return _quiet_mlflow().MlflowClient(tracking_uri=prepare_store(uri))


def print_table(header, rows) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def paired_command(experiment: str, reference_a: str, reference_b: str, seeds: bool, samples: int) -> None:
    from segpipe.evaluation.paired import PairedComparison, check_same_test_data, compare_groups
    from segpipe.paths import PROJECT_ROOT
    from segpipe.tracking.leaderboard import experiment_runs
    from segpipe.tracking.paired_runs import resolve, seed_group

    client = _client()
    sides = [resolve(client, experiment, reference, PROJECT_ROOT) for reference in (reference_a, reference_b)]
    if seeds:
        if any(side.run is None for side in sides):
            raise SegpipeError("--seeds groups MLflow runs by their params: both A and B must be runs in this store")
        runs = experiment_runs(client, experiment, max_runs=None)
        groups = [seed_group(client, side.run, runs) for side in sides]
    else:
        groups = [[side] for side in sides]
    check_same_test_data([member.test_data for group in groups for member in group])
    comparison = compare_groups(*[[member.test_data.results for member in group] for group in groups], samples=samples)
    for label, group in zip("AB", groups):
        first = group[0]
        where = f"MLflow run {first.run.run_id}" if first.run else "git/DVC revision"
        seeds_note = (f", {len(group)} seeds: {', '.join(m.run.params.get('train.seed', '?') for m in group)}"
                      if len(group) > 1 else "")
        print(f"{label}: {first.test_data.name} ({where}{seeds_note})")
    data = sides[0].test_data
    print(f"test data: {comparison.images} images, classes {', '.join(data.results.classes)}, "
          f"data_processed_dvc_md5 {data.processed_md5 or 'unknown'}")
    print()
    print_table(PairedComparison.HEADER, comparison.rows())
    print()
    print(f"B vs A in test mIoU: {comparison.headline.verdict} at {comparison.confidence:.0%}. {comparison.note()}")


def promote_command(args) -> int:
    from segpipe.config import load_params
    from segpipe.evaluation.paired import PairedComparison
    from segpipe.tracking.champion import promote
    from segpipe.tracking.paired_runs import find_run

    params = load_params() if not (args.name and args.experiment) else None
    name = args.name or params.mlflow.register_model
    if not name:
        raise SegpipeError("which registered model? pass --name NAME, or set mlflow.register_model in params.yaml")
    client = _client()
    run = find_run(client, args.experiment or params.mlflow.experiment, args.run) if client is not None else None
    if run is None:
        raise SegpipeError(f"{args.run!r}: no such run in this MLflow store (give a run id, run name or DVC experiment "
                           "name; `segpipe compare` lists them)")
    promotion = promote(client, name, run, args.samples)
    if promotion.comparison is not None:
        print(f"A: the champion (version {promotion.previous}); B: {run.name} (version {promotion.version})")
        print_table(PairedComparison.HEADER, promotion.comparison.rows())
        print()
    print(promotion.message)
    return 0 if promotion.promoted else 1


def _experiment_from_params() -> str:
    from segpipe.config import load_params

    return load_params().mlflow.experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="segment new images with a trained model")
    predict.add_argument("images", nargs="+", help="image files, folders (the images directly inside) or quoted globs "
                                                   "('photos/**/*.jpg')")
    predict.add_argument("--model", type=Path, default=BEST_MODEL)
    predict.add_argument("--out", type=Path, default=Path("predictions"))
    predict.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    predict.add_argument("--probabilities", action="store_true", help="also write one probability map per class")
    predict.add_argument("--window", default="auto", help="sliding window at the working resolution: auto (the training "
                         "input's size, for images more than twice as large), none (always whole), or HxW")
    predict.add_argument("--overlap", type=float, default=0.5, help="fraction by which windows overlap (default 0.5)")
    predict.add_argument("--batch-size", type=int, default=8, help="images or windows per forward pass")
    export = commands.add_parser("export", help="write the model as ONNX, checked against PyTorch")
    export.add_argument("--model", type=Path, default=BEST_MODEL, help="default: models/model.pt")
    export.add_argument("--out", type=Path, default=BEST_MODEL.with_suffix(".onnx"), help="default: models/model.onnx")
    export.add_argument("--samples", nargs="*", type=Path, default=[],
                        help="images to check ONNX Runtime against PyTorch on (default: random images of three sizes)")
    export.add_argument("--atol", type=float, default=None, help="absolute tolerance on logits (default 1e-4)")
    export.add_argument("--rtol", type=float, default=None, help="tolerance relative to the largest |logit| (default 1e-4)")
    compare = commands.add_parser("compare", help="leaderboard of the MLflow experiment's runs, or the paired "
                                  "comparison of two (segpipe compare A B)")
    compare.add_argument("runs", nargs="*", metavar="RUN", help="two runs to compare, A then B: MLflow run ids or names, "
                         "DVC experiment names or git revisions; none for the leaderboard")
    compare.add_argument("--seeds", action="store_true", help="with A B: compare the groups of runs that differ from "
                         "A and from B only in train.seed (resampling images and seeds)")
    compare.add_argument("--samples", type=int, default=1000, help="bootstrap resamples of the paired comparison")
    compare.add_argument("--group-seeds", action="store_true", help="leaderboard of the groups of runs that differ only "
                         "in train.seed: mean ± std over seeds")
    compare.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment in params.yaml)")
    compare.add_argument("--params", nargs="*", default=DEFAULT_PARAMS, help="params to show (dotted keys)")
    compare.add_argument("--metrics", nargs="*", default=DEFAULT_METRICS, help="metrics to show")
    compare.add_argument("--sort", default="test_miou", help="metric to sort by, best first")
    compare.add_argument("--ascending", action="store_true", help="sort lowest first (for losses)")
    compare.add_argument("--baseline", metavar="RUN_ID", help="show each run's differences from this run")
    compare.add_argument("--limit", type=int, help="show the first N runs only")
    compare.add_argument("--out", type=Path, help="also write the table as .csv or .md")
    promote = commands.add_parser("promote", help="move the registry's champion alias to this run's model version, "
                                  "only if it is better than the champion (exit 1 when not)")
    promote.add_argument("run", help="MLflow run id, run name or DVC experiment name")
    promote.add_argument("--name", help="registered model (default: mlflow.register_model in params.yaml)")
    promote.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment in params.yaml)")
    promote.add_argument("--samples", type=int, default=1000, help="bootstrap resamples of the paired comparison")
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            return predict_images_command(args)
        elif args.command == "export":
            export_onnx_command(args)
        elif args.command == "compare":
            compare_command(args)
        elif args.command == "promote":
            return promote_command(args)
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not type(exc).__module__.startswith("mlflow"):
            raise
        # MLflow's own errors (a registry call refused, a server gone): one sentence, no URL's password, no traceback.
        print(f"error: MLflow: {redact(str(exc)).strip().splitlines()[0][:500]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
