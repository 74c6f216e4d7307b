"""`segpipe`: what users do outside the DVC graph.

    segpipe predict IMAGE|FOLDER|GLOB ... [--model models/model.pt] [--out predictions] [--probabilities]
    segpipe export [--model models/model.pt] [--out models/model.onnx] [--samples IMAGE ...]
    segpipe compare [--sort test_miou] [--params ...] [--metrics ...] [--baseline RUN_ID] [--out runs.csv|runs.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segpipe.errors import SegpipeError
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

    from segpipe.tracking.leaderboard import against_baseline, leaderboard, search_runs, write_table
    from segpipe.tracking.store import server_uri, tracking_uri

    experiment = args.experiment or _experiment_from_params()
    # A login in the URI goes to MLflow apart from it, so no message names the password.
    table = leaderboard(search_runs(experiment, server_uri(tracking_uri())), args.params, args.metrics, args.sort,
                        args.ascending)
    if args.baseline:
        table = against_baseline(table, args.baseline, args.params, args.metrics)
    if args.limit:
        table = table.head(args.limit)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False) if not table.empty else f"no runs in experiment {experiment!r}")
    if args.out:
        write_table(table, args.out)
        print(f"written: {args.out}")


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
    compare = commands.add_parser("compare", help="leaderboard of the MLflow experiment's runs")
    compare.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment in params.yaml)")
    compare.add_argument("--params", nargs="*", default=DEFAULT_PARAMS, help="params to show (dotted keys)")
    compare.add_argument("--metrics", nargs="*", default=DEFAULT_METRICS, help="metrics to show")
    compare.add_argument("--sort", default="test_miou", help="metric to sort by, best first")
    compare.add_argument("--ascending", action="store_true", help="sort lowest first (for losses)")
    compare.add_argument("--baseline", metavar="RUN_ID", help="show each run's differences from this run")
    compare.add_argument("--limit", type=int, help="show the first N runs only")
    compare.add_argument("--out", type=Path, help="also write the table as .csv or .md")
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            return predict_images_command(args)
        elif args.command == "export":
            export_onnx_command(args)
        elif args.command == "compare":
            compare_command(args)
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
