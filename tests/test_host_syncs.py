"""No host synchronisation that grows with the data: a GPU that must hand a value back to
the host waits for all its queued work, so one such read per image or per step makes a
loop launch-bound (benchmarks/RESULTS.md, the H200 findings). These tests record every op
a pass issues (TorchDispatchMode, on the CPU: the same ops a GPU would run) and count the
ones that make a GPU wait for the host, at two sizes 8-16x apart: the count must not grow."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from segpipe.config import AugmentParams, load_params
from segpipe.data.batches import Batches
from segpipe.data.processed import ProcessedSplit
from segpipe.device import runtime_for
from segpipe.evaluation.metrics import ConfusionMatrix, confusion_counts, confusion_matrix
from segpipe.evaluation.scoring import evaluate, score_test
from segpipe.models import create_model, spec_for
from segpipe.training.loop import train_one_epoch
from segpipe.training.losses import create_loss
from segpipe.training.optim import build_scheduler

CPU = runtime_for("cpu", False, False)
IGNORE = 255
CLASSES = 3

# Ops after which a GPU's result is read on the host (or whose output size depends on the data, which
# the host must learn before it can allocate): each one waits for everything queued before it.
SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "bincount", "unique", "_unique", "_unique2",
           "unique_consecutive", "unique_dim", "equal", "is_nonzero", "allclose", "repeat_interleave", "tolist"}


@pytest.fixture(autouse=True)
def counting_as_on_a_gpu(monkeypatch):
    """The CPU counts with bincount (no device to wait for, and faster there); record the path a GPU takes."""
    monkeypatch.setattr("segpipe.evaluation.metrics.COUNT_AS_ON_A_GPU", True)


class SyncRecorder(TorchDispatchMode):
    """Counts the syncing ops (and copies to the host) a block issues."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops += 1
        if name in SYNCING:
            self.counts[name] += 1
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or []):
            self.counts["index with a boolean mask"] += 1  # a nonzero inside
        elif name == "_to_copy" and str(kwargs.get("device", "")) == "cpu" and args[0].device.type != "cpu":
            self.counts["copy to the host"] += 1  # (on a GPU run of these tests; on the CPU every tensor is there)
        return func(*args, **kwargs)


def recorded(work) -> SyncRecorder:
    with SyncRecorder() as recorder:
        work()
    return recorder


def test_the_recorder_sees_what_a_per_image_bincount_loop_would_do():
    """The recorder itself: the old way (a bincount and a read per image) grows with the images."""
    def old_way(n):
        for _ in range(n):
            torch.bincount(torch.randint(0, 4, (64,)), minlength=4)
            float(torch.ones(()))
    few, many = recorded(lambda: old_way(4)), recorded(lambda: old_way(64))
    assert few.counts == {"bincount": 4, "_local_scalar_dense": 4}
    assert many.counts == {"bincount": 64, "_local_scalar_dense": 64}


def test_fixed_size_counts_equal_bincount_and_issue_no_sync():
    generator = torch.Generator().manual_seed(5)
    target = torch.randint(0, 21, (3, 40, 50), generator=generator).to(torch.uint8)
    target[:, :4] = IGNORE
    pred = torch.randint(0, 21, (3, 40, 50), generator=generator)
    per_sample = recorded(lambda: confusion_counts(pred, target, 21, IGNORE, per_sample=True))
    assert not per_sample.counts
    counts = confusion_counts(pred, target, 21, IGNORE, per_sample=True)
    for k in range(3):
        valid = target[k] != IGNORE
        expected = torch.bincount(target[k][valid].long() * 21 + pred[k][valid], minlength=21 * 21)
        assert torch.equal(counts[k, :-1], expected) and counts[k, -1] == 0
    assert torch.equal(confusion_counts(pred, target, 21, IGNORE), counts.sum(dim=0))
    target[1, 10, 10] = 30  # out of range: counted, then refused once the pass reads the matrix
    matrix = ConfusionMatrix(21, IGNORE)
    assert not recorded(lambda: matrix.update(pred, target)).counts
    with pytest.raises(ValueError, match=r"labels outside 0..20 \(other than 255"):
        matrix.numpy()
    with pytest.raises(ValueError, match=r"labels outside 0..20"):
        confusion_matrix(pred, target, 21, IGNORE)


def test_split(n: int, seed: int = 0) -> ProcessedSplit:
    """Working shapes of two kinds and native shapes of three, labels that are mostly right."""
    rng = np.random.default_rng(seed)
    working_shapes, native_shapes = [(12, 16), (16, 12)], [(24, 32), (18, 24), (32, 24)]
    images, masks, natives = [], [], []
    for i in range(n):
        h, w = working_shapes[i % 2]
        nh, nw = native_shapes[i % 3] if i % 2 == 0 else (32, 24)
        images.append(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        masks.append(rng.integers(0, CLASSES, (h, w)).astype(np.uint8))
        native = rng.integers(0, CLASSES, (nh, nw)).astype(np.uint8)
        native[0] = IGNORE
        natives.append(native)
    return ProcessedSplit.from_arrays("test", images, masks, [str(i) for i in range(n)], native_masks=natives)


test_split.__test__ = False  # a helper, not a test


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    params = load_params()
    return create_model(spec_for(params.model, CLASSES)).eval()


def per_image_reference(model, split: ProcessedSplit) -> np.ndarray:
    """What score_test computed before: one image at a time, bincount on each."""
    out = []
    for i in range(len(split)):
        image = torch.from_numpy(np.ascontiguousarray(split.image(i)))[None]
        batch = Batches(split, 1, CPU, [0.5] * 3, [0.25] * 3)._to_device(image.numpy(), split.mask(i)[None], np.array([i]))
        with torch.inference_mode():
            logits = model(batch.images)
        truth = torch.from_numpy(np.array(split.native_mask(i)))
        logits = torch.nn.functional.interpolate(logits, size=truth.shape, mode="bilinear", align_corners=False)
        pred, valid = logits.argmax(dim=1)[0], truth != IGNORE
        out.append(torch.bincount(truth[valid].long() * CLASSES + pred[valid], minlength=CLASSES**2).reshape(CLASSES, CLASSES))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("resident", [False, True])
def test_scoring_issues_the_same_syncs_for_4_images_as_for_64_and_counts_exactly(resident):
    model = small_model()

    def scoring(n):
        split = test_split(n)
        batches = Batches(split, 8, CPU, [0.5] * 3, [0.25] * 3, resident=resident)
        result = {}

        def work():
            result["test"] = score_test(model, batches, CLASSES, IGNORE, CPU)
            result["val"] = evaluate(model, batches, CLASSES, IGNORE, CPU)
        return recorded(work), result, split

    (few, _, _), (many, result, split) = scoring(4), scoring(64)
    assert many.ops > 8 * few.ops / 2  # the larger pass did do ~16x the work
    assert many.counts == few.counts, (few.counts, many.counts)
    # Only the two checks of labels out of range and the validation's mean loss read values back, once each pass.
    assert sum(many.counts.values()) <= 4
    expected = per_image_reference(model, split)
    assert np.array_equal(result["test"].per_image, expected)
    assert np.array_equal(result["test"].native.numpy(), expected.sum(axis=0))


def test_scoring_one_image_at_a_time_as_on_a_cpu_counts_what_the_gpu_way_counts(monkeypatch):
    """The CPU's way (one image at a time, bincount) and the GPU's (images of one size together, fixed-size counts)
    give the same per-image matrices, on images of several original sizes."""
    model, split = small_model(), test_split(12)
    batches = Batches(split, 8, CPU, [0.5] * 3, [0.25] * 3)
    as_on_a_gpu = score_test(model, batches, CLASSES, IGNORE, CPU)
    monkeypatch.setattr("segpipe.evaluation.metrics.COUNT_AS_ON_A_GPU", False)
    one_at_a_time = score_test(model, batches, CLASSES, IGNORE, CPU)
    expected = per_image_reference(model, split)
    assert len({tuple(s) for s in split.native_shapes.tolist()}) > 1  # the grouping has groups to make
    for result in (as_on_a_gpu, one_at_a_time):
        assert np.array_equal(result.per_image, expected)
        assert np.array_equal(result.native.numpy(), expected.sum(axis=0))
    assert np.array_equal(as_on_a_gpu.working.numpy(), one_at_a_time.working.numpy())


def training_run(steps: int, optimizer_class, resident: bool, **optimizer_args):
    """`steps` steps of train_one_epoch on random crops of images of several shapes, with the
    fused optimizer a GPU gets (PyTorch's CPU has the same fused kernels)."""
    params = load_params()
    model = create_model(spec_for(params.model.model_copy(update={"base_channels": 4}), CLASSES))
    split = test_split(steps * 4)
    batches = Batches(split, 4, CPU, [0.5] * 3, [0.25] * 3, crop=(8, 12), ignore_index=IGNORE, resident=resident)
    optimizer = optimizer_class(model.parameters(), lr=1e-3, fused=True, **optimizer_args)
    scheduler = build_scheduler(optimizer, params.train.model_copy(update={"epochs": 1}), batches.training_steps())
    augment = AugmentParams(scale_min=0.8, scale_max=1.25, random_crop=True, hflip=0.5, vflip=0.0)
    loss_fn = create_loss("cross_entropy", CLASSES, IGNORE, None)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    return recorded(lambda: train_one_epoch(model, batches, loss_fn, optimizer, scheduler, scaler, CPU, augment, IGNORE,
                                            generator))


@pytest.mark.parametrize("optimizer_class, args, resident", [
    (torch.optim.AdamW, {}, False), (torch.optim.AdamW, {}, True), (torch.optim.SGD, {"momentum": 0.9}, True)])
def test_an_epoch_issues_the_same_syncs_for_4_steps_as_for_32(optimizer_class, args, resident):
    few, many = training_run(4, optimizer_class, resident, **args), training_run(32, optimizer_class, resident, **args)
    assert many.ops > 4 * few.ops
    assert many.counts == few.counts, (few.counts, many.counts)


def test_crops_gathered_on_the_device_are_the_pixels_the_host_copies():
    split = test_split(12)
    split = ProcessedSplit.from_arrays("train", [split.image(i) for i in range(12)] + [np.full((6, 7, 3), 9, np.uint8)],
                                       [split.mask(i) for i in range(12)] + [np.ones((6, 7), np.uint8)],
                                       [str(i) for i in range(13)])
    host = Batches(split, 13, CPU, [0.0] * 3, [1.0] * 3, crop=(10, 14), ignore_index=IGNORE, resident=False)
    device = Batches(split, 13, CPU, [0.0] * 3, [1.0] * 3, crop=(10, 14), ignore_index=IGNORE, resident=True)
    for seed in range(5):
        u = torch.rand(13, 2, generator=torch.Generator().manual_seed(seed))
        u[0] = torch.tensor([0.0, 0.9999999])  # the corners' extremes
        index = np.arange(13)
        host_images, host_masks = host._crops(index, u)
        device_images, device_masks = device._crops(index, u)
        assert device_images.dtype == torch.uint8 and device_masks.dtype == torch.uint8
        assert np.array_equal(device_images.numpy(), host_images)
        assert np.array_equal(device_masks.numpy(), host_masks)
    assert (host_masks[12, 6:] == IGNORE).all() and (host_images[12, 6:] == 0).all()  # the 6x7 image, padded
    gathered = recorded(lambda: device._crops(index, u))
    assert not gathered.counts
