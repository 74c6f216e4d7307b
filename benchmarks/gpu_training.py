"""The training path on a GPU, end to end: `python benchmarks/gpu_training.py`.

Trains the project's model (params.yaml: model, loss, optimizer, augment, train.amp,
train.channels_last) on synthetic 480x360 photos, made and preprocessed as `make bench`
makes them, through training.loop.train_one_epoch and evaluation.scoring.evaluate: the split on the GPU when
it fits, eager and under torch.compile. It fails (exit 1) when a loss is not finite or
the validation mIoU does not rise, and prints per variant the images/s after the first
epoch, the first epoch's seconds (torch.compile's cost), the peak GPU memory and the
runtime it used. `--device cpu` runs the same code on the CPU (AMP and channels-last
off there), which is how the tests keep it working on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]

import torch  # noqa: E402

from benchmarks.photos import preprocess_photos, write_photos  # noqa: E402
from benchmarks.project import project_params  # noqa: E402
from benchmarks.workload import training_setup  # noqa: E402
from segpipe.data.batches import Batches  # noqa: E402
from segpipe.data.processed import ProcessedSplit, read_summary  # noqa: E402
from segpipe.device import runtime_for  # noqa: E402
from segpipe.evaluation.metrics import scores  # noqa: E402
from segpipe.evaluation.scoring import evaluate
from segpipe.training.loop import train_one_epoch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--side", type=int, default=128, help="working resolution (shorter side) and crop")
    parser.add_argument("--no-compile", action="store_true", help="the eager variant only")
    return parser.parse_args(argv)


def train_variant(compiled: bool, args, params, runtime, processed: Path) -> dict:
    summary = read_summary(processed)
    num_classes, ignore = len(summary["classes"]), summary["ignore_index"]
    train_split, val_split = ProcessedSplit.load(processed, "train"), ProcessedSplit.load(processed, "val")
    steps = len(train_split) // args.batch_size
    setup = training_setup(params, runtime, summary, steps, args.epochs)
    stepping = torch.compile(setup.model) if compiled else setup.model
    batches = Batches(train_split, args.batch_size, runtime, summary["mean"], summary["std"],
                      (args.side, args.side), ignore)
    validation = Batches(val_split, args.batch_size, runtime, summary["mean"], summary["std"], None, ignore)
    on_gpu = runtime.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(runtime.device)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()  # train_one_epoch waits for the GPU before it returns
        result = train_one_epoch(stepping, batches, setup.loss_fn, setup.optimizer, setup.scheduler, setup.scaler,
                                 runtime, params.augment, ignore, setup.generator, epoch)
        seconds = time.perf_counter() - start
        matrix, val_loss = evaluate(setup.model, validation, num_classes, ignore, runtime, setup.loss_fn)
        epochs.append({"epoch": epoch, "seconds": round(seconds, 3), "images": result["images"],
                       "loss": round(result["loss"], 4), "val_loss": round(val_loss, 4),
                       "val_miou": scores(matrix.numpy(), summary["classes"])["miou"]})
    later = epochs[1:] or epochs
    return {
        "variant": "compiled" if compiled else "eager",
        "device": str(runtime.device),
        "gpu": torch.cuda.get_device_name(runtime.device) if on_gpu else None,
        "amp": str(runtime.amp_dtype).removeprefix("torch.") if runtime.amp_dtype else None,
        "channels_last": runtime.channels_last,
        "split_on_gpu": bool(batches.resident) if on_gpu else None,
        "images_per_second": round(sum(e["images"] for e in later) / sum(e["seconds"] for e in later), 1),
        "first_epoch_seconds": epochs[0]["seconds"],
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(runtime.device) / 2**20) if on_gpu else None,
        "epochs": epochs,
    }


def problems_of(result: dict) -> list[str]:
    epochs = result["epochs"]
    found = [f"{result['variant']}: epoch {e['epoch']} loss {e['loss']}" for e in epochs
             if not math.isfinite(e["loss"]) or not math.isfinite(e["val_loss"])]
    first, last = epochs[0]["val_miou"] or 0.0, max(e["val_miou"] or 0.0 for e in epochs)
    if not last > first:
        found.append(f"{result['variant']}: validation mIoU did not rise ({first} -> best {last})")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine", file=sys.stderr)
        return 2
    params = project_params()
    runtime = runtime_for(args.device, params.train.amp, params.train.channels_last)
    print(f"torch {torch.__version__}; {params.model.name} (base_channels {params.model.base_channels}), "
          f"{params.loss.name}, batch {args.batch_size}, {args.side}x{args.side} crops, {args.epochs} epochs", flush=True)
    problems = []
    with tempfile.TemporaryDirectory(prefix="segpipe-gpu-") as tmp:
        raw = write_photos(Path(tmp) / "raw", {"train": args.train_images, "val": args.val_images, "test": 2})
        processed = preprocess_photos(raw, Path(tmp) / "processed", args.side, params.preprocess)
        for compiled in (False,) if args.no_compile else (False, True):
            result = train_variant(compiled, args, params, runtime, processed)
            print(json.dumps(result), flush=True)
            problems += problems_of(result)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
