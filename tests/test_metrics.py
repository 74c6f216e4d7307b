import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex, MulticlassRecall

from segpipe.evaluation.metrics import ConfusionMatrix, confusion_matrix, scores

IGNORE = 255
CLASSES = ["bg", "a", "b"]


def test_confusion_matrix_by_hand_with_ignore_label():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    # rows: true class; columns: predicted; the ignored pixel (true 255, pred 2) is not counted.
    expected = torch.tensor([
        [2, 1, 0],
        [0, 2, 0],
        [1, 0, 1],
    ])
    assert torch.equal(confusion_matrix(pred, target, 3, IGNORE), expected)


def test_scores_by_hand():
    cm = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = scores(cm, CLASSES)
    # bg: tp 2, fn 1, fp 1 -> iou 2/4, f1 4/6, acc 2/3
    # a:  tp 2, fn 0, fp 1 -> iou 2/3, f1 4/5, acc 1
    # b:  tp 1, fn 1, fp 0 -> iou 1/2, f1 2/3, acc 1/2
    assert s["per_class"]["bg"] == pytest.approx({"iou": 0.5, "f1": 2 / 3, "accuracy": 2 / 3}, abs=1e-6)
    assert s["per_class"]["a"] == pytest.approx({"iou": 2 / 3, "f1": 0.8, "accuracy": 1.0}, abs=1e-6)
    assert s["per_class"]["b"] == pytest.approx({"iou": 0.5, "f1": 2 / 3, "accuracy": 0.5}, abs=1e-6)
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3, abs=1e-6)
    assert s["f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3, abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-6)
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 + 0.5) / 3, abs=1e-6)


def test_class_absent_everywhere_is_null_and_left_out_of_means():
    cm = np.array([[3, 0, 0], [1, 4, 0], [0, 0, 0]])
    s = scores(cm, CLASSES)
    assert s["per_class"]["b"] == {"iou": None, "f1": None, "accuracy": None}
    assert s["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2, abs=1e-6)


def test_predicted_but_absent_class_scores_zero_iou():
    cm = np.array([[3, 0, 1], [0, 4, 0], [0, 0, 0]])
    s = scores(cm, CLASSES)
    assert s["per_class"]["b"]["iou"] == 0.0
    assert s["per_class"]["b"]["accuracy"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    target = torch.randint(0, num_classes, (4, 16, 16), generator=g)
    target[torch.rand(4, 16, 16, generator=g) < 0.1] = IGNORE
    # Predictions that are right most of the time, so every score is informative.
    pred = torch.where(torch.rand(4, 16, 16, generator=g) < 0.7, target.clamp(max=num_classes - 1),
                       torch.randint(0, num_classes, (4, 16, 16), generator=g))
    names = [str(i) for i in range(num_classes)]
    accumulated = ConfusionMatrix(num_classes, IGNORE)
    for i in range(4):  # accumulating batch by batch equals one pass over everything
        accumulated.update(pred[i], target[i])
    ours = scores(accumulated.numpy(), names)

    kwargs = dict(num_classes=num_classes, ignore_index=IGNORE, average=None)
    iou = MulticlassJaccardIndex(**kwargs)(pred, target)
    f1 = MulticlassF1Score(**kwargs)(pred, target)
    recall = MulticlassRecall(**kwargs)(pred, target)
    pixel_accuracy = MulticlassAccuracy(num_classes=num_classes, ignore_index=IGNORE, average="micro")(pred, target)
    for c in range(num_classes):
        assert ours["per_class"][str(c)]["iou"] == pytest.approx(float(iou[c]), abs=1e-5)
        assert ours["per_class"][str(c)]["f1"] == pytest.approx(float(f1[c]), abs=1e-5)
        assert ours["per_class"][str(c)]["accuracy"] == pytest.approx(float(recall[c]), abs=1e-5)
    assert ours["miou"] == pytest.approx(float(iou.mean()), abs=1e-5)
    assert ours["pixel_accuracy"] == pytest.approx(float(pixel_accuracy), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_confusion_matrix_matches_boolean_indexing_and_refuses_labels_out_of_range(dtype):
    generator = torch.Generator().manual_seed(3)
    target = torch.randint(0, 21, (2, 40, 50), generator=generator)
    target[:, :5] = 255
    pred = torch.randint(0, 21, (2, 40, 50), generator=generator)
    valid = target != 255
    expected = torch.bincount(target[valid] * 21 + pred[valid], minlength=21 * 21).reshape(21, 21)
    assert torch.equal(confusion_matrix(pred.to(dtype), target.to(dtype), 21, 255), expected)
    for label in ([30, 300, -1] if dtype == torch.int64 else [30]):  # below the ignored label, above it, negative
        wrong = target.clone()
        wrong[0, 10, 10] = label
        with pytest.raises(ValueError, match=r"labels outside 0..20 \(other than 255"):
            confusion_matrix(pred.to(dtype), wrong.to(dtype), 21, 255)
