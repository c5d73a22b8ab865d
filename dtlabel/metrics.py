"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Conventions (the same for every command and table in dtlabel):

- The confusion matrix ``cm`` is ``(C, C)`` int64, rows = ground truth, columns = prediction,
  summed over all pixels of all images (not averaged per image).
- Pixels whose ground truth is ``ignore_index`` (or any id outside ``[0, C)``) are skipped.
- IoU of class c = ``cm[c, c] / (row_c + col_c - cm[c, c])``. A class that appears in neither the
  ground truth nor the prediction has an undefined IoU (NaN) and is **excluded** from the mean;
  a class that is predicted but never in the ground truth has IoU 0 and counts.
- mIoU = mean of the defined IoUs; pixel accuracy = trace / number of counted pixels.

Functions return fractions in [0, 1]; :meth:`ConfusionMatrix.summary` reports percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ConfusionMatrix", "confusion_matrix", "mean_iou", "per_class_iou", "pixel_accuracy"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``(C, C)`` int64 counts (rows ground truth, columns prediction) of ``pred`` vs ``target``.

    ``pred`` and ``target`` hold class ids of the same shape (any, e.g. ``(B, H, W)``). Target
    pixels equal to ``ignore_index`` or outside ``[0, C)`` are skipped; a prediction outside
    ``[0, C)`` on a counted pixel is a ``ValueError`` (a bug, not a data problem).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    c = int(num_classes)
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < c) & (target != ignore_index)
    pred, target = pred[keep], target[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
        raise ValueError(f"predictions must be class ids in [0, {c}), got values in [{int(pred.min())}, {int(pred.max())}]")
    return torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)


def per_class_iou(cm: torch.Tensor) -> torch.Tensor:
    """``(C,)`` float64 IoU per class; NaN where the class is in neither ground truth nor prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean of the defined per-class IoUs (NaN if no class is defined, i.e. no counted pixel)."""
    iou = per_class_iou(cm)
    defined = ~torch.isnan(iou)
    return float(iou[defined].mean()) if bool(defined.any()) else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels / counted pixels (NaN if no pixel was counted)."""
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else math.nan


class ConfusionMatrix:
    """Accumulates a confusion matrix batch by batch (on the device of the first update)::

        cm = ConfusionMatrix(num_classes, ignore_index=255)
        for logits, mask in batches:
            cm.update(logits.argmax(1), mask)
        cm.miou(), cm.summary(class_names)
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add ``pred`` vs ``target`` (class ids, same shape, e.g. ``(B, H, W)``)."""
        cm = confusion_matrix(pred.detach(), target.detach(), self.num_classes, self.ignore_index)
        self.matrix = self.matrix.to(cm.device) + cm

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def iou(self) -> torch.Tensor:
        return per_class_iou(self.matrix.cpu())

    def miou(self) -> float:
        return mean_iou(self.matrix.cpu())

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix.cpu())

    def summary(self, class_names: Sequence[str] | None = None, digits: int = 2) -> dict[str, Any]:
        """JSON-able metrics in percent: ``miou``, ``pixel_accuracy``, ``per_class_iou`` (None where
        undefined), ``classes_counted`` (classes in the mean) and ``pixels``."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        iou = self.iou()

        def pct(v: float) -> float | None:
            return None if math.isnan(v) else round(100.0 * v, digits)

        return {
            "miou": pct(self.miou()),
            "pixel_accuracy": pct(self.pixel_accuracy()),
            "per_class_iou": {n: pct(float(v)) for n, v in zip(names, iou)},
            "classes_counted": int((~torch.isnan(iou)).sum()),
            "pixels": int(self.matrix.sum()),
        }


UNITS = "percent; IoU of classes absent from both ground truth and prediction is null and not averaged"


def write_metrics(path: str | Path, cm: ConfusionMatrix, class_names: Sequence[str], split: str, n_images: int,
                  size: Sequence[int], **extra: Any) -> dict[str, Any]:
    """Write ``metrics.json``, the one schema of every command that scores a model: units, split,
    image count, size, mIoU, pixel accuracy, per-class IoU, classes counted, pixels, the confusion
    matrix (rows ground truth, columns prediction), then ``extra``. Returns what was written."""
    from dtlabel.io import write_json

    s = cm.summary(class_names)
    record = {"units": UNITS, "split": split, "n_images": int(n_images), "size": [int(v) for v in size], **s,
              "confusion_matrix": cm.matrix.tolist(), **extra}
    write_json(path, record)
    return record
