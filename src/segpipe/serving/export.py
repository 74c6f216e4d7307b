"""Taking a trained model out of segpipe: ONNX (`segpipe export`), and the
torch.export program that training logs to MLflow (tracking/runs.py: TrainingRun.log_model).

Both carry the metadata a user needs to prepare the input and read the output
(model_metadata): class names, ignore label, the working-resolution rule and
normalisation. Both take any batch size, height and width: the models are fully
convolutional and upsample bilinearly to their input's size. torch.export,
which both exporters trace with, fixes every size that is 1 in the example, so
the example has two images or more and sides larger than the model's total
stride (feature_stride).

The ONNX file is written only after ONNX Runtime has reproduced PyTorch's logits
on sample inputs within the stated tolerance.

The metadata (models/checkpoint.py: model_metadata) and the example sizes
(models/forward.py) are shared with the MLflow model, which training logs: this
module is imported by `segpipe export` alone, so changing it re-runs no stage.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segpipe.atomic import atomic_file
from segpipe.errors import SegpipeError
from segpipe.models.checkpoint import INPUT_NAME, OUTPUT_NAME, ModelCheckpoint, model_metadata
from segpipe.models.forward import export_example, feature_stride

# The opset torch 2.14's ONNX exporter (dynamo=True) writes natively, without a
# version conversion; ONNX Runtime runs it from 1.14 on, TensorRT from 8.6.
ONNX_OPSET = 18


# Logits from ONNX Runtime and from PyTorch (float32, CPU) must agree everywhere to
# within ATOL + RTOL * (the batch's largest |logit|): float32 rounding grows with the
# logits' scale, and a tiny unet with logits up to 35 differs by 2.5e-4 (8e-6 of it).
ATOL, RTOL = 1e-4, 1e-4


def random_inputs(checkpoint: ModelCheckpoint, stride: int) -> list[np.ndarray]:
    """Random photos, normalised, at the training size and two other sizes (one a batch
    of two): what ONNX Runtime is checked on when no photos are given."""
    h, w = checkpoint.input_shape
    mean, std = (np.array(v, np.float32).reshape(1, 3, 1, 1) for v in (checkpoint.data.mean, checkpoint.data.std))
    generator = np.random.default_rng(0)
    shapes = [(1, h, w), (2, h + stride + 3, w + 2 * stride + 5), (1, 3 * h + 1, max(w // 2, stride + 1))]
    return [((generator.integers(0, 256, (n, 3, sh, sw)).astype(np.float32) / 255 - mean) / std).astype(np.float32)
            for n, sh, sw in shapes]


def onnx_model(model: torch.nn.Module, example: np.ndarray, metadata: dict):
    """The ModelProto, dynamic in batch, height and width, metadata in metadata_props (JSON values)."""
    from torch.export import Dim

    side = feature_stride(model) + 1
    dynamic = ({0: Dim("batch", min=1), 2: Dim("height", min=side), 3: Dim("width", min=side)},)
    narration = io.StringIO()
    try:
        with contextlib.redirect_stdout(narration):  # the exporter narrates its steps
            program = torch.onnx.export(model, (torch.from_numpy(export_example(model, example)),), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic,
                                        opset_version=ONNX_OPSET, verbose=False)
    except Exception as exc:  # torch.export and the ONNX translation raise many types
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
        # torch.export's own reason is further down than the exporter's first line, which only names the
        # step that failed: the line after its "## Exception summary".
        summary = [k for k, line in enumerate(lines) if line.startswith("## Exception summary")]
        detail = next((line for line in lines[summary[0] + 1:] if line), "") if summary else ""
        reason = (lines[0] + (f" ({detail})" if detail else ""))[:500]
        raise SegpipeError(f"torch.onnx could not export the {type(model).__name__} model: {reason}") from None
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto


def onnx_session(model_bytes: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def tolerance(expected: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> float:
    """The largest difference allowed from `expected` logits (see ATOL, RTOL)."""
    return atol + rtol * float(np.abs(expected).max())


@torch.inference_mode()
def check_parity(model: torch.nn.Module, session, inputs: list[np.ndarray], atol: float, rtol: float, target: Path) -> float:
    """The largest |ONNX Runtime - PyTorch| over the inputs; a SegpipeError naming the
    input and the tolerance when any logit is outside it."""
    largest = 0.0
    for batch in inputs:
        expected = model(torch.from_numpy(batch)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise SegpipeError(f"{target}: ONNX Runtime returned logits of shape {got.shape} for input {batch.shape}, "
                               f"PyTorch {expected.shape}; the file was not written")
        difference = float(np.abs(got - expected).max())
        largest = max(largest, difference)
        allowed = tolerance(expected, atol, rtol)
        if not difference <= allowed:
            raise SegpipeError(
                f"{target}: ONNX Runtime's logits differ from PyTorch's by up to {difference:.3g} on an input of shape "
                f"{tuple(batch.shape)}, more than the tolerance {allowed:.3g} (atol={atol:g} + rtol={rtol:g} x the largest "
                f"|logit| {float(np.abs(expected).max()):.3g}); the file was not written. Check the installed onnxruntime "
                "and onnxscript versions, or widen --atol/--rtol if the difference is acceptable for this model")
    return largest


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    checked_shapes: list[tuple[int, ...]]
    max_abs_difference: float
    atol: float
    rtol: float

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked_shapes)
        return (f"written: {self.path} (ONNX opset {self.opset}; input {INPUT_NAME} (batch, 3, height, width), dynamic)\n"
                f"checked: ONNX Runtime matches PyTorch on inputs {shapes}: largest logit difference "
                f"{self.max_abs_difference:.2g} (tolerance atol={self.atol:g} + rtol={self.rtol:g} x largest |logit|)")


def export_onnx(checkpoint: ModelCheckpoint, out_path: Path, inputs: list[np.ndarray] | None = None, atol: float = ATOL,
                rtol: float = RTOL, source: Path | str = "the checkpoint") -> OnnxExport:
    """Export, check on `inputs` (normalised batches; random photos when None), then write."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise SegpipeError(f"segpipe export needs onnx, onnxscript and onnxruntime ({exc}); "
                           "pip install onnx onnxscript onnxruntime") from None
    model = checkpoint.build_model("cpu", source)
    inputs = inputs or random_inputs(checkpoint, feature_stride(model))
    proto = onnx_model(model, inputs[0], model_metadata(checkpoint))
    model_bytes = proto.SerializeToString()
    largest = check_parity(model, onnx_session(model_bytes), inputs, atol, rtol, out_path)
    try:
        with atomic_file(out_path, "wb") as handle:
            handle.write(model_bytes)
    except OSError as exc:
        raise SegpipeError(f"{out_path}: cannot write ({exc}); choose another --out") from None
    return OnnxExport(out_path, ONNX_OPSET, [tuple(b.shape) for b in inputs], largest, atol, rtol)
