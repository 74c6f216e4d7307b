"""`segpipe`: what users do outside the DVC graph.

    segpipe predict IMAGE [IMAGE ...] [--model models/model.pt] [--out predictions]
    segpipe compare [--sort test_miou] [--params ...] [--metrics ...] [--baseline RUN_ID] [--out runs.csv|runs.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.compare import DEFAULT_METRICS, DEFAULT_PARAMS
from segpipe.errors import SegpipeError


def predict_files(model_path: Path, images: list[Path], out_dir: Path, device: str) -> list[Path]:
    """Write <stem>_mask.png (class indices, palette PNG) and <stem>_overlay.png for each image.

    Images of any size are resized to the model's training size and the
    predicted logits are resized back, so the mask matches the input exactly."""
    import torch
    from torch.nn import functional as F

    from segpipe.checkpoint import load_checkpoint, model_from_checkpoint
    from segpipe.data.augment import to_float_images
    from segpipe.data.processed import DatasetInfo
    from segpipe.device import runtime_for
    from segpipe.engine import predict_logits
    from segpipe.overlay import PALETTE, overlay

    checkpoint = load_checkpoint(model_path)
    info = DatasetInfo(**checkpoint["data"])
    runtime = runtime_for(device, amp=True, channels_last=True)
    model = model_from_checkpoint(checkpoint, runtime.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        try:
            with Image.open(path) as img:
                original = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise SegpipeError(f"{path}: cannot read image ({exc}); pass PNG, JPEG, TIFF or BMP files") from None
        resized = np.asarray(Image.fromarray(original).resize((info.size, info.size), Image.BILINEAR))
        batch = to_float_images(torch.from_numpy(resized.copy())[None].to(runtime.device), info.mean, info.std)
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
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
