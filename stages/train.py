"""train: fit the model named in params on data/processed/, keep the best epoch by
validation mIoU (models/model.pt, written only when training completes), and record
the run in MLflow. An interrupted training resumes from its last completed epoch."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

import csv
import math
import sys

import torch

from segpipe.atomic import atomic_file, write_json
from segpipe.config import params_digest
from segpipe.data.processed import DatasetInfo
from segpipe.device import runtime_for
from segpipe.distributed import join, relaunch_under_torchrun, under_torchrun
from segpipe.errors import SegpipeError, warn
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.scoring import evaluate
from segpipe.models import MODELS
from segpipe.models.checkpoint import model_metadata
from segpipe.paths import (
    BEST_MODEL,
    PROCESSED_DIR,
    PROJECT_ROOT,
    RESUME_DIR,
    RESUME_STATE,
    RUN_LINK,
    TRAIN_HISTORY,
    TRAIN_METRICS,
)
from segpipe.runner import print_summary, run_stage, stage_params
from segpipe.tracking.lineage import lineage_tags, new_run_name
from segpipe.tracking.metric_names import best_so_far, epoch_metrics, training_summary_metrics
from segpipe.tracking.params import loggable_params, what_changed
from segpipe.tracking.runs import TrainingRun
from segpipe.training.epoch_images import epoch_strips
from segpipe.training.loop import TrainingDiverged, seed_everything, train_one_epoch
from segpipe.training.losses import LOSSES
from segpipe.training.resume import Resume, discard
from segpipe.training.setup import build_parts


def main() -> None:
    params = stage_params()
    MODELS.check(params.model.name)
    LOSSES.check(params.loss.name)
    if params.train.nproc > 1 and not under_torchrun():
        sys.exit(relaunch_under_torchrun(params.train.nproc, __file__))  # each process runs this main()
    runtime = runtime_for(params.train.device, params.train.amp, params.train.channels_last)
    group = join(runtime.device)
    try:
        train(params, DatasetInfo.load(PROCESSED_DIR), runtime, group)
    finally:
        group.close()


def train(params, info: DatasetInfo, runtime, group) -> None:
    """Build the parts, resume or start, open the run, loop over the epochs, publish."""
    say = print if group.is_main else (lambda *args, **kwargs: None)  # one process speaks for all
    generator = seed_everything(params.train.seed)
    parts = build_parts(params, info, PROCESSED_DIR, runtime, group, say)
    resume = Resume.or_start(params, parts, generator, RESUME_STATE, PROCESSED_DIR, PROJECT_ROOT,
                             new_run_name(params.model.name, parts.info.dataset), group.is_main)
    run = open_run(params, parts.info, resume, group.is_main)
    if parts.weights is not None:  # which bytes the training started from: a changed file shows on the run
        run.set_tags(parts.weights.tags(params.model.weights))
    processes = f" x {group.world} processes" if group.active else ""
    say(f"training {params.model.name} on {parts.train_images} images, device {runtime.device}{processes}, MLflow run "
        f"{resume.run_name}", flush=True)

    epoch = resume.next_epoch
    try:
        for epoch in range(resume.next_epoch, params.train.epochs + 1):
            lr = parts.optimizer.param_groups[0]["lr"]
            stats = train_one_epoch(parts.stepping, parts.train_batches, parts.loss_fn, parts.optimizer, parts.scheduler,
                                    parts.scaler, runtime, params.augment, parts.info.ignore_index, generator, epoch,
                                    description=f"epoch {epoch}")
            matrix, val_loss = evaluate(parts.model, parts.val_batches, parts.info.num_classes, parts.info.ignore_index,
                                        runtime, parts.loss_fn)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(f"the validation loss became {val_loss} at epoch {epoch}")
            val = scores(matrix.numpy(), parts.info.classes)
            row = epoch_record(epoch, lr, stats, val_loss, val)
            resume.record(epoch, row, val, parts)  # the history, and the best model so far
            if group.is_main:
                resume.save(epoch, run.run_id)  # before logging: a crash in between re-logs on resume instead of losing the epoch
            run.log_metrics(epoch_metrics(row) | best_so_far(resume.history, epoch), step=epoch)
            if group.is_main and run.active:
                run.log_images(epoch_strips(parts.model, parts.val_batches.split, parts.info.mean, parts.info.std,
                                            runtime), step=epoch)
            say(describe(row, params.train.epochs), flush=True)
    except BaseException as stop:
        explain_stop(stop, epoch, params, run, runtime, group.is_main)  # marks the run; a divergence becomes a SegpipeError
        raise

    if group.is_main:  # the main process writes the outputs and records the run
        try:
            publish(params, parts, resume, run, runtime, group.world)
        except KeyboardInterrupt:  # Ctrl-C during a long model upload: killed, as in the loop, and the state is kept
            run.finish("KILLED")
            warn(f"training interrupted while publishing; {RESUME_STATE} holds the last epoch, and the next `dvc repro` "
                 "publishes from there")
            raise
        except BaseException:  # a full disk while writing the model, say: the run is not complete, and must not say so
            run.finish("FAILED")
            raise


def open_run(params, info: DatasetInfo, resume: "Resume", is_main: bool) -> TrainingRun:
    """The MLflow run: the interrupted training's when resuming, else a new one with its lineage."""
    if not is_main:
        return TrainingRun.elsewhere()
    # MLflow shows mlflow.note.content as the run's description: what this run changed.
    tags = lineage_tags(PROJECT_ROOT, params_digest(params)) | {"dataset": info.dataset, "model": params.model.name,
                                                                 "mlflow.note.content": what_changed(params, PROJECT_ROOT)}
    run = TrainingRun(params.mlflow.experiment, loggable_params(params), tags, params.mlflow.required, resume.run_name,
                      resume_run_id=resume.run_id)
    if resume.resumed:
        print(f"resuming from epoch {resume.next_epoch - 1} of {params.train.epochs} ({RESUME_STATE}), MLflow run "
              f"{run.run_id}", flush=True)
        run.set_tags({"resumed_from_epoch": str(resume.next_epoch - 1)})
        logged = run.logged_steps("train_loss")
        for row in resume.history:  # epochs whose metrics the interrupted run did not get to log
            if row["epoch"] not in logged:
                run.log_metrics(epoch_metrics(row) | best_so_far(resume.history, row["epoch"]), step=row["epoch"])
    else:
        run.log_dataset(info.dataset, PROCESSED_DIR, tags.get("data_processed_dvc_md5"))
        resume.save(0, run.run_id)
    return run


def explain_stop(stop: BaseException, epoch: int, params, run: TrainingRun, runtime, is_main: bool) -> None:
    """The failure policy: the run is never left RUNNING, and a user learns what to change."""
    if isinstance(stop, TrainingDiverged):
        run.finish("FAILED")
        fixes = [f"lower train.lr (now {params.train.lr:g})"]
        if params.loss.class_weights is not None:
            fixes.append(f"check loss.class_weights ({params.loss.class_weights})")
        if runtime.amp_dtype is not None:
            fixes.append("set train.amp: false")
        kept = (f"the last good state (epoch {epoch - 1}) is kept in {RESUME_STATE}" if epoch > 1
                else "no epoch had completed")
        raise SegpipeError(f"training diverged: {stop}. Nothing was published; {kept}. To fix: {', or '.join(fixes)}") from None
    if isinstance(stop, KeyboardInterrupt):
        run.finish("KILLED")
        if is_main:
            warn(f"training interrupted during epoch {epoch}; {RESUME_STATE} holds epoch {epoch - 1}, and the next "
                 "`dvc repro` resumes from there")
        return
    run.finish("FAILED")


def publish(params, parts, resume: "Resume", run: TrainingRun, runtime, processes: int) -> None:
    """The best model, the metrics and the history; the model in MLflow; then the resume state goes."""
    best, history = resume.best, resume.history
    best.save(BEST_MODEL)
    train_seconds = sum(r["seconds"] for r in history)
    summary = {
        "best_val_miou": best.val["miou"],
        "best_epoch": best.epoch,
        "epochs": params.train.epochs,
        "seconds": round(resume.seconds(), 2),
        "train_images_per_second": round(sum(r["images_per_second"] * r["seconds"] for r in history) / train_seconds, 2)
        if train_seconds else 0.0,
        "device": str(runtime.device),
        "processes": processes,
        "resumed": resume.resumed,
    }
    peak_gpu = torch.cuda.max_memory_allocated(runtime.device) / 2**30 if runtime.device.type == "cuda" else None
    run.log_metrics(training_summary_metrics(summary["best_val_miou"], summary["seconds"], summary["train_images_per_second"],
                                             peak_gpu))
    if params.mlflow.log_model:
        example = next(parts.val_batches.iterate()).images[:2].float().cpu().contiguous().numpy()
        run.log_model(best.build_model(), example, params.mlflow.register_model, metadata=model_metadata(best))
    write_json(TRAIN_METRICS, summary)
    with atomic_file(TRAIN_HISTORY) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    run.link(BEST_MODEL).save(RUN_LINK)
    run.finish("FINISHED")
    discard(RESUME_DIR)
    print_summary("train", **summary, mlflow_run_id=run.run_id, mlflow_run_name=resume.run_name)


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


if __name__ == "__main__":
    run_stage(main)
