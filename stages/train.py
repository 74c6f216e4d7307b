"""train: fit the model named in params on data/processed/, keep the best epoch by
validation mIoU (models/model.pt, written only when training completes), and record
the run in MLflow. An interrupted training resumes from its last completed epoch."""

import _bootstrap  # noqa: F401  (this checkout's src/ first on sys.path)

import csv
import math
import sys
import time
from dataclasses import replace

import torch

from segpipe.atomic import atomic_file, write_json
from segpipe.checkpoint import ModelCheckpoint, ResumeState
from segpipe.config import params_digest
from segpipe.data.processed import DatasetInfo, ProcessedSplit, read_summary
from segpipe.device import runtime_for
from segpipe.distributed import Distributed, join, relaunch_under_torchrun, under_torchrun
from segpipe.engine import Batches, TrainingDiverged, evaluate, seed_everything, train_one_epoch
from segpipe.errors import SegpipeError
from segpipe.export import model_metadata
from segpipe.losses import LOSSES, create_loss, resolve_class_weights
from segpipe.metrics import scores
from segpipe.mlflow_metrics import epoch_metrics, training_summary_metrics
from segpipe.models import MODELS, apply_weights, create_model, spec_for
from segpipe.optim import build_optimizer, build_scheduler
from segpipe.resume import discard, previous_training, random_states, restore_random_states, training_fingerprint
from segpipe.run_params import loggable_params, what_changed
from segpipe.stage import (
    BEST_MODEL, PROCESSED_DIR, PROJECT_ROOT, RESUME_DIR, RESUME_STATE, RUN_LINK, TRAIN_HISTORY, TRAIN_METRICS,
    print_summary, run_stage, stage_params, warn,
)
from segpipe.tracking import TrainingRun, lineage_tags, new_run_name


def prepare_for_steps(model: torch.nn.Module, params, runtime, group: Distributed) -> torch.nn.Module:
    """What the training steps call: the model itself, or DDP around it (gradients averaged over
    the processes, batch norm synchronised when asked), compiled when asked. Checkpoints and
    evaluation use `model` itself, whose weights these share."""
    stepping = model
    if group.active:
        if params.sync_batchnorm:
            if runtime.device.type != "cuda":
                raise SegpipeError("train.sync_batchnorm synchronises batch norm across GPUs (SyncBatchNorm runs on CUDA "
                                   "only); set it to false for CPU processes")
            stepping = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        stepping = torch.nn.parallel.DistributedDataParallel(stepping, device_ids=device_ids)
    if params.compile:
        stepping = torch.compile(stepping)
    return stepping


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
    params = stage_params()
    MODELS.check(params.model.name)
    LOSSES.check(params.loss.name)
    if params.train.nproc > 1 and not under_torchrun():
        sys.exit(relaunch_under_torchrun(params.train.nproc, __file__))  # each process runs this main()
    info = DatasetInfo.load(PROCESSED_DIR)
    spec = spec_for(params.model, info.num_classes)
    class_weights = resolve_class_weights(params.loss.class_weights, info.num_classes, read_summary(PROCESSED_DIR))
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    group = join(runtime.device)
    try:
        train(params, info, spec, class_weights, runtime, group)
    finally:
        group.close()


def train(params, info: DatasetInfo, spec, class_weights, runtime, group: Distributed) -> None:
    say = print if group.is_main else (lambda *args, **kwargs: None)  # one process speaks for all
    generator = seed_everything(params.train.seed)

    # The model first: pretrained weights decide how images are normalised.
    model = create_model(spec)
    loaded = apply_weights(model, params.model.weights)
    if loaded is not None:
        say(f"starting from {loaded.description}", flush=True)
        if loaded.mean is not None:
            info = replace(info, mean=loaded.mean, std=loaded.std)
    if not model.own_knobs:
        say(f"note: model.pooling and model.base_channels shape cnn, fcn and unet only; {spec.name} does not use them",
            flush=True)
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    stepping = prepare_for_steps(model, params.train, runtime, group)  # DDP and/or torch.compile around the model

    crop = tuple(params.train.crop) if params.train.crop else None
    shard = (group.rank, group.world)
    train_split = ProcessedSplit.load(PROCESSED_DIR, "train")
    train_batches = Batches(train_split, params.train.batch_size, runtime, info.mean, info.std, crop, info.ignore_index,
                            shard)
    # Validation batches as large as training ones: train reads no evaluate.* param, so changing one
    # re-runs evaluate and report only.
    val_batches = Batches(ProcessedSplit.load(PROCESSED_DIR, "val"), params.train.batch_size, runtime, info.mean,
                          info.std, shard=shard)
    train_batches.check_trainable()
    input_shape = crop or train_split.uniform_shape

    loss_fn = create_loss(params.loss.name, info.num_classes, info.ignore_index, class_weights).to(runtime.device)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, train_batches.training_steps())
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)

    fingerprint = training_fingerprint(params, PROCESSED_DIR, PROJECT_ROOT / "stages/train.py")
    state, why_not = previous_training(RESUME_STATE, fingerprint)
    if why_not and group.is_main:
        warn(why_not)
    if state is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        scaler.load_state_dict(state.scaler)
        restore_random_states(state.rng, generator)
    history, best = (state.history, state.best) if state else ([], None)
    run_name = state.mlflow_run_name if state else new_run_name(params.model.name, info.dataset)
    earlier_seconds, started = (state.started if state else 0.0), time.perf_counter()

    # MLflow shows mlflow.note.content as the run's description: what this run changed.
    tags = lineage_tags(PROJECT_ROOT, params_digest(params)) | {"dataset": info.dataset, "model": params.model.name,
                                                                 "mlflow.note.content": what_changed(params, PROJECT_ROOT)}
    run = TrainingRun(params.mlflow.experiment, loggable_params(params), tags, params.mlflow.required, run_name,
                      resume_run_id=state.mlflow_run_id if state else None) if group.is_main else TrainingRun.elsewhere()

    def save_state(epoch: int) -> None:
        if not group.is_main:
            return
        ResumeState(fingerprint, epoch, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                    scaler.state_dict(), random_states(generator), history, best, run.run_id, run_name,
                    earlier_seconds + time.perf_counter() - started).save(RESUME_STATE)

    first_epoch = state.epoch + 1 if state else 1
    if state is not None:
        say(f"resuming from epoch {state.epoch} of {params.train.epochs} ({RESUME_STATE}), MLflow run {run.run_id}",
              flush=True)
        run.set_tags({"resumed_from_epoch": str(state.epoch)})
        logged = run.logged_steps("train_loss")
        for row in history:  # epochs whose metrics the interrupted run did not get to log
            if row["epoch"] not in logged:
                run.log_metrics(epoch_metrics(row), step=row["epoch"])
    else:
        run.log_dataset(info.dataset, PROCESSED_DIR, tags.get("data_processed_dvc_md5"))
        save_state(0)
    processes = f" x {group.world} processes" if group.active else ""
    say(f"training {params.model.name} on {len(train_split)} images, device {runtime.device}{processes}, MLflow run "
        f"{run_name}", flush=True)

    epoch = first_epoch
    try:
        for epoch in range(first_epoch, params.train.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            stats = train_one_epoch(stepping, train_batches, loss_fn, optimizer, scheduler, scaler, runtime,
                                    params.augment, info.ignore_index, generator, epoch, description=f"epoch {epoch}")
            matrix, val_loss = evaluate(model, val_batches, info.num_classes, info.ignore_index, runtime, loss_fn)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"the validation loss became {val_loss} at epoch {epoch}")
            val = scores(matrix.numpy(), info.classes)
            row = epoch_record(epoch, lr, stats, val_loss, val)
            history.append(row)
            if best is None or (val["miou"] or 0.0) > (best.val["miou"] or 0.0):
                weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = ModelCheckpoint(spec, weights, info, tuple(input_shape), epoch, val)
            save_state(epoch)  # before logging: a crash in between re-logs on resume instead of losing the epoch
            run.log_metrics(epoch_metrics(row), step=epoch)
            say(describe(row, params.train.epochs), flush=True)
    except TrainingDiverged as exc:
        run.finish("FAILED")
        fixes = [f"lower train.lr (now {params.train.lr:g})"]
        if params.loss.class_weights is not None:
            fixes.append(f"check loss.class_weights ({params.loss.class_weights})")
        if runtime.amp_dtype is not None:
            fixes.append("set train.amp: false")
        kept = (f"the last good state (epoch {epoch - 1}) is kept in {RESUME_STATE}" if epoch > 1
                else "no epoch had completed")
        raise SegpipeError(f"training diverged: {exc}. Nothing was published; {kept}. To fix: {', or '.join(fixes)}") from None
    except KeyboardInterrupt:
        run.finish("KILLED")
        if group.is_main:
            warn(f"training interrupted during epoch {epoch}; {RESUME_STATE} holds epoch {epoch - 1}, and the next "
                 "`dvc repro` resumes from there")
        raise
    except BaseException:
        run.finish("FAILED")  # never leave the run RUNNING
        raise

    if not group.is_main:
        return  # the main process writes the outputs and records the run
    best.save(BEST_MODEL)
    train_seconds = sum(r["seconds"] for r in history)
    summary = {
        "best_val_miou": best.val["miou"],
        "best_epoch": best.epoch,
        "epochs": params.train.epochs,
        "seconds": round(earlier_seconds + time.perf_counter() - started, 2),
        "train_images_per_second": round(sum(r["images_per_second"] * r["seconds"] for r in history) / train_seconds, 2)
        if train_seconds else 0.0,
        "device": str(runtime.device),
        "processes": group.world,
        "resumed": state is not None,
    }
    run.log_metrics(training_summary_metrics(summary["best_val_miou"], summary["seconds"]))
    if params.mlflow.log_model:
        example = next(val_batches.iterate()).images[:2].float().cpu().contiguous().numpy()
        run.log_model(best.build_model(), example, params.mlflow.register_model, metadata=model_metadata(best))
    write_json(TRAIN_METRICS, summary)
    with atomic_file(TRAIN_HISTORY) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    run.link(BEST_MODEL).save(RUN_LINK)
    run.finish("FINISHED")
    discard(RESUME_DIR)
    print_summary("train", **summary, mlflow_run_id=run.run_id, mlflow_run_name=run_name)


if __name__ == "__main__":
    run_stage(main)
