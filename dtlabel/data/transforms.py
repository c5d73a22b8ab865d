"""Albumentations transforms (image and mask together) and torch datasets over sources."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dtlabel.data.base import ImageSource, LabeledSource
from dtlabel.errors import DataError


def build_transform(size: Sequence[int], train: bool = False, hflip: bool = True,
                    scale: Sequence[float] | None = (0.75, 1.25), color: float = 0.0,
                    ignore_index: int = 255) -> A.Compose:
    """Resize to ``size = (H, W)``; for training add flips, scale jitter and optional colour jitter.

    Masks use nearest-neighbour interpolation; pixels padded in by zooming out get ``ignore_index``.
    """
    h, w = int(size[0]), int(size[1])
    ops: list[A.BasicTransform] = [A.Resize(h, w, interpolation=cv2.INTER_AREA)]
    if train and scale and tuple(scale) != (1.0, 1.0):
        ops.append(A.Affine(scale=tuple(scale), rotate=0, border_mode=cv2.BORDER_CONSTANT, fill=0,
                            fill_mask=ignore_index, p=0.8))
    if train and hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if train and color > 0:
        ops.append(A.ColorJitter(brightness=color, contrast=color, saturation=color, hue=color / 4, p=0.8))
    return A.Compose(ops)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(3, H, W) float32`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: ``(3, H, W)`` or ``(B, 3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` or
    ``(B, H, W, 3)`` uint8 (rounded, clipped)."""
    x = images.detach().cpu().float()
    x = x.permute(1, 2, 0) if x.ndim == 3 else x.permute(0, 2, 3, 1)
    return ((x + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def check_pair(image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int, where: str,
               mask_where: str | None = None) -> None:
    """Raise DataError if the mask does not fit its image or holds ids outside [0, num_classes);
    ``where`` names the pair (its image), ``mask_where`` the mask file for errors in its values."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                        f"{image.shape[1]}x{image.shape[0]}: {where}; masks must match their images pixel for pixel")
    vals = np.unique(mask)
    bad = vals[((vals < 0) | (vals >= num_classes)) & (vals != ignore_index)]
    if bad.size:
        raise DataError(f"class id {int(bad[0])} outside [0, {num_classes}) and not ignore_index {ignore_index} "
                        f"in {mask_where or 'the mask of ' + where}; fix the mask or data.classes / data.ignore_index")


class SegmentationDataset(Dataset):
    """``(image (3, H, W) in [-1, 1], mask (H, W) int64)`` pairs of ``ids`` of a labeled source."""

    def __init__(self, source: LabeledSource, ids: Sequence[str], transform: A.Compose, validate: bool = True) -> None:
        self.source, self.ids, self.transform, self.validate = source, list(ids), transform, validate

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        id_ = self.ids[k]
        image, mask = self.source.image(id_), self.source.mask(id_)
        if self.validate:
            check_pair(image, mask, self.source.num_classes, self.source.ignore_index, self.source.describe(id_),
                       self.source.describe_mask(id_))
        out = self.transform(image=image, mask=mask.astype(np.uint8) if mask.max() < 256 else mask)
        return to_tensor(out["image"]), torch.from_numpy(np.ascontiguousarray(out["mask"])).long()


class ImageDataset(Dataset):
    """Images of ``ids`` of a source as ``(3, H, W)`` in [-1, 1]."""

    def __init__(self, source: ImageSource, ids: Sequence[str] | None, transform: A.Compose) -> None:
        self.source, self.transform = source, transform
        self.ids = list(ids) if ids is not None else list(source.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> torch.Tensor:
        return to_tensor(self.transform(image=self.source.image(self.ids[k]))["image"])
