"""train: fit the model named in params on data/processed/, keep the best checkpoint by
validation mIoU (models/model.pt) and a resumable last one (models/last.pt), and record
the run in MLflow."""

import csv
import time
from dataclasses import asdict

import torch

from segpipe.atomic import atomic_file, write_json
from segpipe.checkpoint import Checkpointer, load_checkpoint, model_from_checkpoint
from segpipe.config import flatten, load_params
from segpipe.data.processed import DatasetInfo, ProcessedSplit
from segpipe.device import runtime_for
from segpipe.engine import Batches, evaluate, seed_everything, train_one_epoch
from segpipe.losses import create_loss
from segpipe.metrics import scores
from segpipe.models import create_model
from segpipe.optim import build_optimizer, build_scheduler
from segpipe.stage import (
    BEST_MODEL, LAST_CHECKPOINT, PROCESSED_DIR, PROJECT_ROOT, TRAIN_HISTORY, TRAIN_METRICS, print_summary, run_stage,
)
from segpipe.tracking import TrainingRun, lineage_tags


def epoch_record(epoch: int, lr: float, stats: dict, val_loss: float, val: dict) -> dict:
    """One row of metrics/train_history.csv and one step of the MLflow curves."""
    return {
        "epoch": epoch, "train_loss": round(stats["loss"], 6), "val_loss": round(val_loss, 6),
        "val_miou": val["miou"], "val_f1": val["f1"], "val_pixel_accuracy": val["pixel_accuracy"],
        "lr": lr, "images_per_second": round(stats["images_per_second"], 2), "seconds": round(stats["seconds"], 3),
    }


def describe(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_miou {row['val_miou'] or 0:.4f} lr {row['lr']:.2e} {row['images_per_second']:.0f} img/s {row['seconds']:.1f}s")


def main() -> None:
    params = load_params()
    info = DatasetInfo.load(PROCESSED_DIR)
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    generator = seed_everything(params.train.seed)

    train_batches = Batches(ProcessedSplit.load(PROCESSED_DIR, "train"), params.train.batch_size, runtime, info.mean, info.std)
    val_batches = Batches(ProcessedSplit.load(PROCESSED_DIR, "val"), params.evaluate.batch_size, runtime, info.mean, info.std)

    model = create_model(params.model.name, info.num_classes, params.model.pooling, params.model.base_channels)
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    loss_fn = create_loss(params.loss.name, info.num_classes, info.ignore_index, params.loss.class_weights).to(runtime.device)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, len(train_batches))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)

    checkpoints = Checkpointer(BEST_MODEL, LAST_CHECKPOINT)
    history, images_seen, started = [], 0, time.perf_counter()
    tags = lineage_tags(PROJECT_ROOT) | {"dataset": info.dataset, "model": params.model.name}
    with TrainingRun(params.mlflow.experiment, flatten(params), tags, params.mlflow.required) as run:
        run.log_dataset(info.dataset, PROCESSED_DIR, tags.get("data_processed_dvc_md5"))
        print(f"training {params.model.name} on {len(train_batches.split)} images, device {runtime.device}", flush=True)
        for epoch in range(1, params.train.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            stats = train_one_epoch(
                model, train_batches, loss_fn, optimizer, scheduler, scaler, runtime,
                params.augment, info.ignore_index, generator, description=f"epoch {epoch}",
            )
            matrix, val_loss = evaluate(model, val_batches, info.num_classes, info.ignore_index, runtime, loss_fn)
            val = scores(matrix.numpy(), info.classes)

            row = epoch_record(epoch, lr, stats, val_loss, val)
            history.append(row)
            images_seen += stats["images"]
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            print(describe(row, params.train.epochs), flush=True)
            checkpoints.save(
                model, val["miou"],
                training_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "scaler": scaler.state_dict(),
                                "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state()}},
                data=asdict(info), params=params.model_dump(), epoch=epoch, val=val, history=history,
                mlflow_run_id=run.run_id,
            )

        train_seconds = sum(r["seconds"] for r in history)
        summary = {
            "best_val_miou": round(checkpoints.best_miou, 6),
            "best_epoch": max(history, key=lambda r: r["val_miou"] or 0.0)["epoch"],
            "epochs": params.train.epochs,
            "seconds": round(time.perf_counter() - started, 2),
            "train_images_per_second": round(images_seen / train_seconds, 2) if train_seconds else 0.0,
            "device": str(runtime.device),
        }
        run.log_metrics({"best_val_miou": summary["best_val_miou"], "train_seconds": summary["seconds"]})
        example = next(val_batches.iterate())[0][:2].float().cpu().contiguous().numpy()
        run.log_model(model_from_checkpoint(load_checkpoint(BEST_MODEL)), example, params.mlflow.register_model)

    write_json(TRAIN_METRICS, summary)
    with atomic_file(TRAIN_HISTORY) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    print_summary("train", **summary, mlflow_run_id=run.run_id)


if __name__ == "__main__":
    run_stage(main)
