"""Scoring a segmentation model on a labeled split: one loop for heads, students and ``eval``.

The model is a ``predict`` function, so the loop knows nothing of teachers or smp::

    def predict(images, indices):   # images (B, 3, H, W) in [-1, 1] on the CPU; indices (B,) into ids
        return pred, uncertainty      # (B, H, W) class ids; (B, H, W) nats or None

Under torchrun every process scores ``ids[rank::world]`` (indices stay positions in the whole
list, so noise seeds are those of a single process) and the confusion matrices are summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm
from torch.utils.data import DataLoader, Dataset

from dtlabel.data.base import LabeledSource
from dtlabel.data.transforms import SegmentationDataset, build_transform, to_uint8
from dtlabel.metrics import ConfusionMatrix

Predict = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass
class Evaluation:
    """A confusion matrix, up to ``keep`` samples ``(image uint8 HxWx3, mask, pred, uncertainty or
    None)`` for pictures (process 0), and the mean per-image uncertainty score (None without one)."""

    cm: ConfusionMatrix
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    mean_score: float | None = None


class _Shard(Dataset):
    def __init__(self, ds: SegmentationDataset, rank: int, world: int) -> None:
        self.ds, self.rank, self.world = ds, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.ds), self.world))

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        i = self.rank + k * self.world
        image, mask = self.ds[i]
        return i, image, mask


@torch.no_grad()
def evaluate_segmentation(predict: Predict, source: LabeledSource, ids: Sequence[str], size: Sequence[int],
                          batch_size: int, keep: int = 0, num_workers: int = 0, rank: int = 0, world: int = 1,
                          score: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = False) -> Evaluation:
    """Score ``predict`` on ``ids`` of ``source`` resized to ``size = (H, W)``.

    ``score`` turns an uncertainty map ``(B, H, W)`` into per-image scores ``(B,)`` (e.g. the mean of
    the top 10%); their mean over all images is :attr:`Evaluation.mean_score`. ``progress`` shows a
    bar over the images (``dtlabel eval``; the training commands score quietly after their own bar).
    """
    ds = SegmentationDataset(source, list(ids), build_transform(tuple(size), train=False))
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    out = Evaluation(cm)
    total = torch.zeros(2, dtype=torch.float64)  # sum of scores, count
    shard = _Shard(ds, rank, world)
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers) if len(shard) else ()
    with tqdm(total=len(shard), desc="eval", unit="img", disable=not progress or rank > 0) as bar:
        for idx, images, masks in loader:
            pred, unc = predict(images, idx)
            pred = pred.cpu()
            cm.update(pred, masks)
            if unc is not None and score is not None:
                s = score(unc).double().cpu()
                total += torch.stack([s.sum(), torch.tensor(float(len(s)), dtype=torch.float64)])
            for b in range(images.shape[0]):
                if len(out.samples) >= keep:
                    break
                u = unc[b].float().cpu().numpy() if unc is not None else None
                out.samples.append((to_uint8(images[b]), masks[b].numpy(), pred[b].numpy(), u))
            bar.update(images.shape[0])
    if world > 1:
        m = cm.matrix.clone()
        torch.distributed.all_reduce(m)
        cm.matrix = m
        torch.distributed.all_reduce(total)
    if total[1] > 0:
        out.mean_score = float(total[0] / total[1])
    return out
