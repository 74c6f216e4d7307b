"""Running a model forward: the input layout and precision the runtime asks for,
and the input sizes a model generalises over (for exporters)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segpipe.data.normalise import to_float_images
from segpipe.device import Runtime


def prepare_input(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if runtime.channels_last else images


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    with runtime.autocast:
        return model(prepare_input(images, runtime)).float()


@torch.inference_mode()
def predict_masks(model: nn.Module, images: list[np.ndarray], mean, std, runtime: Runtime) -> list[np.ndarray]:
    """(H, W, 3) uint8 images at the working resolution -> (H, W) uint8 class indices, one at a time."""
    masks = []
    for image in images:
        batch = to_float_images(torch.from_numpy(np.array(image, dtype=np.uint8))[None].to(runtime.device), mean, std)
        masks.append(predict_logits(model, batch, runtime).argmax(dim=1)[0].to(torch.uint8).cpu().numpy())
    return masks


@torch.inference_mode()
def feature_stride(model: torch.nn.Module, side: int = 256) -> int:
    """How many input pixels the model's smallest feature map has per pixel (8 for cnn,
    16 for unet, 32 for fcn), measured on one forward pass."""
    smallest = [side]

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            smallest.append(min(output.shape[-2:]))

    hooks = [module.register_forward_hook(record) for module in model.modules()]
    try:
        parameter = next(model.parameters())
        model(torch.zeros(1, getattr(model, "in_channels", 3), side, side, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, side // max(1, min(smallest)))


def export_example(model: torch.nn.Module, example: np.ndarray) -> np.ndarray:
    """A batch torch.export generalises from: at least two images, each side above the
    model's stride. A smaller example is padded by repeating its edge pixels."""
    batch = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    if batch.shape[0] < 2:
        batch = torch.cat([batch, batch])[:2]
    side = feature_stride(model) + 1
    pad_h, pad_w = max(0, side - batch.shape[2]), max(0, side - batch.shape[3])
    if pad_h or pad_w:
        batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="replicate")
    return batch.numpy()
