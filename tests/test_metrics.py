"""Confusion matrix, IoU, mIoU and pixel accuracy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dtlabel.metrics import ConfusionMatrix, confusion_matrix, mean_iou, per_class_iou, pixel_accuracy


def test_hand_computed_two_classes_with_ignore() -> None:
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [255, 0]])
    cm = confusion_matrix(pred, target, 2, ignore_index=255)
    # counted pixels: (gt 0, pred 0), (gt 1, pred 1), (gt 0, pred 1); the 255 pixel is skipped
    assert cm.tolist() == [[1, 1], [0, 1]]
    assert per_class_iou(cm).tolist() == [0.5, 0.5]  # 1 / (2 + 1 - 1) each
    assert mean_iou(cm) == 0.5
    assert pixel_accuracy(cm) == pytest.approx(2 / 3)


def test_absent_class_is_excluded_but_false_positive_class_counts() -> None:
    # 3 classes; class 2 never appears anywhere -> NaN, excluded from the mean
    cm = confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 3)
    iou = per_class_iou(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(float(iou[2]))
    assert mean_iou(cm) == 1.0
    # class 2 predicted but never in the ground truth: IoU 0 and it counts
    cm = confusion_matrix(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]), 3)
    assert per_class_iou(cm).tolist() == [0.5, 1.0, 0.0]
    assert mean_iou(cm) == pytest.approx(0.5)
    assert pixel_accuracy(cm) == 0.75


def test_accumulation_equals_one_shot_and_summary_in_percent() -> None:
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 4, (2, 5, 6), generator=g) for _ in range(3)]
    targets = [torch.randint(0, 4, (2, 5, 6), generator=g) for _ in range(3)]
    targets[1][0, 0, 0] = 255
    acc = ConfusionMatrix(4, ignore_index=255)
    for p, t in zip(preds, targets):
        acc.update(p, t)
    whole = confusion_matrix(torch.cat(preds), torch.cat(targets), 4, 255)
    assert torch.equal(acc.matrix, whole)
    assert int(whole.sum()) == 3 * 2 * 5 * 6 - 1
    s = acc.summary(["a", "b", "c", "d"])
    assert s["miou"] == round(100 * mean_iou(whole), 2)
    assert s["pixel_accuracy"] == round(100 * pixel_accuracy(whole), 2)
    assert list(s["per_class_iou"]) == ["a", "b", "c", "d"] and s["pixels"] == int(whole.sum())


def test_undefined_classes_are_none_in_summary() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    s = cm.summary(["bg", "x", "never"])
    assert s["per_class_iou"] == {"bg": 100.0, "x": 100.0, "never": None}
    assert s["classes_counted"] == 2 and s["miou"] == 100.0
    assert math.isnan(ConfusionMatrix(2).miou())


def test_target_ids_out_of_range_are_skipped_bad_predictions_raise() -> None:
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 7, -1]), 2)
    assert int(cm.sum()) == 1
    with pytest.raises(ValueError, match="predictions must be class ids"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(4), 2)
