"""One code path for one process and many (torchrun, DDP).

`python stages/train.py` with train.nproc > 1 starts torchrun itself (one process
per GPU, or CPU processes on gloo); under torchrun (RANK and WORLD_SIZE set, on one
node or many) each process joins the group. Everything else asks `Distributed`:
which shard of the data is mine, am I the process that logs and writes outputs;
and the loops reduce their sums with `all_reduce`, never torch.distributed directly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from segpipe.errors import SegpipeError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that logs to MLflow and writes outputs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over all processes (in place), or the tensor itself in one process."""
        return all_reduce(tensor) if self.active else tensor

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced in place over the processes of the running group ("sum" or "max"),
    untouched in a single process. The loops call this where they hold no Distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def check_sync_batchnorm(sync_batchnorm: bool, device_type: str) -> None:
    """train.sync_batchnorm asks for SyncBatchNorm, which runs on CUDA only."""
    if sync_batchnorm and device_type != "cuda":
        raise SegpipeError("train.sync_batchnorm synchronises batch norm across GPUs (SyncBatchNorm runs on CUDA only); "
                           "set it to false for CPU processes")


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(device: torch.device) -> Distributed:
    """This process's place in the group torchrun started (or the only process)."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local)


def relaunch_under_torchrun(nproc: int, script: str) -> int:
    """Run `script` in `nproc` processes on this machine and return their exit status.
    Ctrl-C reaches every process; each cleans up and exits."""
    from torch.distributed.run import main as torchrun

    if nproc > 1 and torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise SegpipeError(f"train.nproc is {nproc} but only {torch.cuda.device_count()} GPUs are visible; set train.nproc "
                           f"to at most {torch.cuda.device_count()}")
    args = ["--standalone", f"--nproc-per-node={nproc}", script, *sys.argv[1:]]
    try:
        torchrun(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # torchrun's ChildFailedError: the workers printed their own errors
        return getattr(exc, "exit_code", None) or _worst_exit_code(exc)
    return 0


def _worst_exit_code(exc: Exception) -> int:
    failures = getattr(exc, "failures", {}) or {}
    codes = [getattr(f, "exitcode", 1) for f in failures.values()]
    return max((c for c in codes if c), default=1)
