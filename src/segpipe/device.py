"""Pick the training device and the speed features that go with it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from segpipe.errors import SegpipeError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, or None for full precision
    channels_last: bool

    @property
    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


def select_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; naming an absent device is an error."""
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SegpipeError("train.device is 'cuda' but no CUDA GPU is visible; set train.device: auto or cpu")
    if name == "mps" and not has_mps:
        raise SegpipeError("train.device is 'mps' but MPS is not available; set train.device: auto or cpu")
    return torch.device(name)


def runtime_for(device_name: str, amp: bool, channels_last: bool) -> Runtime:
    device = select_device(device_name)
    if device.type != "cuda":
        # AMP and channels_last pay off on CUDA tensor cores; on CPU they slow training down.
        return Runtime(device, None, False)
    # Under torchrun each process drives its own GPU.
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    # Inputs keep their shape from step to step: let cuDNN pick its fastest kernels once.
    torch.backends.cudnn.benchmark = True
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    return Runtime(device, amp_dtype, channels_last)
