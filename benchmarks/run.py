"""`make bench`: segpipe's performance comparisons, each measured side by side in
one run and printed as ratios (issue 10). See benchmarks/README.md.

    python benchmarks/run.py              # everything, a few minutes on 2 CPU cores
    python benchmarks/run.py --quick      # small sizes, few rounds, no DVC pipeline run
    python benchmarks/run.py --only train evaluate --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The benchmarks/ folder is not put first on sys.path (its module names must not
# shadow installed packages): the harness imports itself as a package, and this
# checkout's own src/, as the stages do.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]

import torch  # noqa: E402

from benchmarks import table  # noqa: E402
from benchmarks.dvc_cached import measure_dvc, stage_count  # noqa: E402
from benchmarks.evaluation import measure_evaluation  # noqa: E402
from benchmarks.machine import cpu_pressure, describe_machine, load_average  # noqa: E402
from benchmarks.photos import preprocess_photos, write_photos  # noqa: E402
from benchmarks.preprocessing import measure_preprocess  # noqa: E402
from benchmarks.project import project_params  # noqa: E402
from benchmarks.train_loop import measure_train_loop  # noqa: E402
from segpipe.device import runtime_for  # noqa: E402

COMPARISONS = ("train", "preprocess", "evaluate", "dvc", "realistic")
# Comparison 6: a size users train on, beside the toy U-Net: a torchvision DeepLabV3 on 512x512 crops.
REALISTIC_MODEL = "deeplabv3_mobilenet_v3_large"
REALISTIC_SIDE = 512
REALISTIC_BATCH = {"cpu": 8, "cuda": 16}


@dataclass(frozen=True)
class Sizes:
    rounds: int = 5               # interleaved repeats of every variant; the best is quoted
    max_rounds: int = 8           # more rounds while a variant's best is not corroborated (a busy machine)
    side: int = 128               # training crops and working resolution (shorter side) of the 480x360 photos
    batch_size: int = 16
    train_images: int = 64        # one epoch of every train-loop variant: short, so that
                                  # more rounds catch the quiet moments of a shared machine
    test_images: int = 64
    workers: tuple[int, ...] = (0, 2)
    preprocess_images: int = 100  # and ten times as many
    preprocess_rounds: int = 3    # of every core and of one process, on the larger set (seconds each)
    dvc_rounds: int = 3
    dvc_images: int | None = None  # None: the project's own data.shapes.num_images
    realistic_steps: int = 1       # steps per timed epoch of the realistic workload: tens of seconds each on 2 CPU cores
    realistic_rounds: int = 1      # (a CUDA machine: raise them with --realistic-steps/--realistic-rounds)


QUICK = Sizes(rounds=2, max_rounds=4, train_images=32, test_images=16, preprocess_images=20, preprocess_rounds=1,
              dvc_rounds=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds, and no DVC or realistic comparison unless named in --only")
    parser.add_argument("--only", nargs="+", choices=COMPARISONS, help="run only these comparisons")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                        help="devices for the train-loop and evaluation comparisons "
                             "(default: cpu, and cuda when present)")
    parser.add_argument("--rounds", type=int, help="repeats of each variant")
    parser.add_argument("--max-rounds", type=int,
                        help="keep repeating, up to this many rounds, while some variant's best is not corroborated")
    parser.add_argument("--train-images", type=int, help="images per training epoch")
    parser.add_argument("--test-images", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--side", type=int, help="working size and crop side, pixels")
    parser.add_argument("--workers", type=int, nargs="+", help="DataLoader worker counts to compare against")
    parser.add_argument("--preprocess-images", type=int, help="the smaller preprocess dataset (the larger is 10x)")
    parser.add_argument("--dvc-images", type=int, help="data.shapes.num_images of the DVC comparison's pipeline")
    parser.add_argument("--realistic-steps", type=int, help="steps per timed epoch of the realistic workload")
    parser.add_argument("--realistic-rounds", type=int, help="timed rounds of the realistic workload")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    overrides = {"rounds": args.rounds, "max_rounds": args.max_rounds, "train_images": args.train_images,
                 "test_images": args.test_images,
                 "batch_size": args.batch_size, "side": args.side, "preprocess_images": args.preprocess_images,
                 "dvc_images": args.dvc_images, "workers": tuple(args.workers) if args.workers else None,
                 "realistic_steps": args.realistic_steps, "realistic_rounds": args.realistic_rounds}
    if args.rounds:
        overrides["dvc_rounds"] = args.rounds
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    return replace(sizes, max_rounds=max(sizes.max_rounds, sizes.rounds))


def devices_from(args: argparse.Namespace) -> list[str]:
    return args.devices or ["cpu", "cuda"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    chosen = set(args.only or [c for c in COMPARISONS if not (args.quick and c in ("dvc", "realistic"))])
    params = project_params()
    machine = describe_machine()
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in arguments)
    print(f"segpipe benchmarks: {command}", flush=True)
    print(json.dumps(machine), flush=True)
    print(f"model {params.model.name} (base_channels {params.model.base_channels}), loss {params.loss.name}, "
          f"optimizer {params.train.optimizer}; batch {sizes.batch_size}, {sizes.side}x{sizes.side} inputs from "
          f"480x360 photos; {sizes.rounds} to {sizes.max_rounds} rounds", flush=True)

    rows: list[table.Row] = []
    details: list[str] = []
    measurements: dict = {"command": command, "machine": machine, "sizes": asdict(sizes)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        if chosen & {"train", "evaluate"}:
            raw = write_photos(Path(tmp) / "raw", {"train": sizes.train_images, "val": 2, "test": sizes.test_images})
            processed = preprocess_photos(raw, Path(tmp) / "processed", sizes.side, params.preprocess)
            for device in devices_from(args):
                if device == "cuda" and not torch.cuda.is_available():
                    rows += table.unmeasured_rows(device, "no CUDA device on this machine", "train" in chosen,
                                                  sizes.workers, "evaluate" in chosen)
                    continue
                runtime = runtime_for(device, params.train.amp, params.train.channels_last)
                if "train" in chosen:
                    print(f"[{device}] comparisons 1 and 2: training loops ...", flush=True)
                    result = measure_train_loop(raw, processed, params, runtime, sizes.batch_size, sizes.side,
                                                list(sizes.workers), sizes.rounds, sizes.max_rounds)
                    rows += table.train_loop_rows(result)
                    details += table.spread_lines(f"[{device}] train", result.timings,
                                                  lambda name, s, r=result: f"{r.images_per_epoch / s:.1f} images/s")
                    measurements[f"train_loop_{device}"] = asdict(result)
                if "evaluate" in chosen:
                    print(f"[{device}] comparison 4: evaluation ...", flush=True)
                    result = measure_evaluation(processed, params, runtime, sizes.rounds, sizes.max_rounds)
                    rows += table.evaluation_rows(result)
                    details += table.spread_lines(f"[{device}] evaluation", result.timings,
                                                  lambda name, s: f"{s:.3f} s")
                    measurements[f"evaluation_{device}"] = asdict(result)
        if "realistic" in chosen:
            rows += measure_realistic(params, sizes, devices_from(args), Path(tmp), measurements)
        if "preprocess" in chosen:
            print("comparison 3: preprocess ...", flush=True)
            result = measure_preprocess(sizes.preprocess_images, sizes.side, workdir=Path(tmp),
                                        rounds=sizes.preprocess_rounds)
            rows += table.preprocess_rows(result)
            measurements["preprocess"] = asdict(result)
        if "dvc" in chosen:
            print(f"comparison 5: dvc repro (a first run of the whole pipeline, then {sizes.dvc_rounds} cached) ...",
                  flush=True)
            result = measure_dvc(sizes.dvc_rounds, sizes.dvc_images, workdir=Path(tmp), max_rounds=sizes.max_rounds)
            rows += table.dvc_rows(result)
            details += table.spread_lines("dvc repro, cached:", {"pipeline": result.pipeline, "floor": result.floor},
                                          lambda name, s: f"{s:.2f} s")
            details.append(f"- dvc: the first, uncached run of the {stage_count()}-stage pipeline took "
                           f"{result.first_run_seconds:.0f} s")
            measurements["dvc"] = asdict(result)

    rows.sort(key=lambda r: r.number)
    print()
    print(table.markdown(rows))
    print()
    print("\n".join(details))
    print(f"\nload average at the end: {load_average()} (at the start: {machine['load_average_at_start']}); "
          f"CPU pressure at the end: {cpu_pressure()} (at the start: {machine['cpu_pressure_at_start']}); "
          f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        measurements["rows"] = [asdict(r) for r in rows]
        args.json.write_text(json.dumps(measurements, indent=2, default=str))
    return 0


def measure_realistic(params, sizes: Sizes, devices: list[str], tmp: Path, measurements: dict) -> list[table.Row]:
    """Comparison 6: the train loop against bare compute at a size users train on."""
    realistic = params.model_copy(update={"model": params.model.model_copy(update={"name": REALISTIC_MODEL})})
    rows = []
    for device in devices:
        batch = REALISTIC_BATCH[device]
        label = f"{REALISTIC_MODEL}, {REALISTIC_SIDE}x{REALISTIC_SIDE}, batch {batch}"
        if device == "cuda" and not torch.cuda.is_available():
            rows.append(table.realistic_unmeasured_row(device, label, "no CUDA device on this machine"))
            continue
        print(f"[{device}] comparison 6: training loop at {label} ...", flush=True)
        images = batch * sizes.realistic_steps
        raw = write_photos(tmp / f"raw_realistic_{device}", {"train": images, "val": 2, "test": 2})
        processed = preprocess_photos(raw, tmp / f"processed_realistic_{device}", REALISTIC_SIDE, params.preprocess)
        runtime = runtime_for(device, params.train.amp, params.train.channels_last)
        result = measure_train_loop(raw, processed, realistic, runtime, batch, REALISTIC_SIDE, [], sizes.realistic_rounds,
                                    sizes.realistic_rounds)
        rows.append(table.realistic_row(result, label))
        measurements[f"realistic_{device}"] = asdict(result)
    return rows


if __name__ == "__main__":
    sys.exit(main())
