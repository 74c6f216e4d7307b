"""`segpipe`: what users do outside the DVC graph.

    segpipe predict IMAGE [IMAGE ...] [--model models/model.pt] [--out predictions]
    segpipe compare [--sort test_miou] [--params ...] [--metrics ...] [--baseline RUN_ID] [--out runs.csv|runs.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from segpipe.compare import DEFAULT_METRICS, DEFAULT_PARAMS
from segpipe.config import SegpipeConfigError
from segpipe.errors import SegpipeError


def predict_files(model_path: Path, images: list[Path], out_dir: Path, device: str) -> list[Path]:
    """Write <stem>_mask.png (class indices, palette PNG) and <stem>_overlay.png for each image.

    Each image is brought to the working resolution the model was trained at
    (the same rule as preprocess), and the predicted logits are resized back, so
    the mask matches the input exactly."""
    import torch
    from torch.nn import functional as F

    from segpipe.checkpoint import load_model_checkpoint
    from segpipe.data.augment import to_float_images
    from segpipe.data.images import read_rgb, resize_rgb
    from segpipe.data.resolution import Resize
    from segpipe.device import runtime_for
    from segpipe.engine import predict_logits
    from segpipe.overlay import PALETTE, overlay

    checkpoint = load_model_checkpoint(model_path)
    resize = Resize(**checkpoint.data.resize)
    runtime = runtime_for(device, amp=True, channels_last=True)
    model = checkpoint.build_model(runtime.device, model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        original = read_rgb(path)
        working = resize_rgb(original, *resize.shape_for(*original.shape[:2]))
        batch = to_float_images(torch.from_numpy(working.copy())[None].to(runtime.device), checkpoint.data.mean,
                                checkpoint.data.std)
        logits = predict_logits(model, batch, runtime)
        logits = F.interpolate(logits, size=original.shape[:2], mode="bilinear", align_corners=False)
        mask = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        mask_image = Image.fromarray(mask, mode="P")
        mask_image.putpalette(PALETTE.reshape(-1).tolist())
        mask_path, overlay_path = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
        mask_image.save(mask_path)
        Image.fromarray(overlay(original, mask)).save(overlay_path)
        written += [mask_path, overlay_path]
    return written


def compare_runs(args) -> None:
    import pandas as pd

    from segpipe.compare import against_baseline, leaderboard, search_runs, write_table
    from segpipe.tracking import tracking_uri

    experiment = args.experiment or _experiment_from_params()
    table = leaderboard(search_runs(experiment, tracking_uri()), args.params, args.metrics, args.sort, args.ascending)
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
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--model", type=Path, default=Path("models/model.pt"))
    predict.add_argument("--out", type=Path, default=Path("predictions"))
    predict.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
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
            for path in predict_files(args.model, args.images, args.out, args.device):
                print(path)
        elif args.command == "compare":
            compare_runs(args)
    except (SegpipeError, SegpipeConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
