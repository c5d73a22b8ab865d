"""The train-head task: a few-label head on a frozen teacher's features, for the engine.

Each step takes a batch of the labeled images' deterministic stream (flips and scale jitter seeded
by the stream position), resizes the images to the teacher's size and computes the teacher's
features **online with fresh noise**: pass ``e`` over the labeled images uses noise stream ``e + 1``
(the paper's feature-space augmentation, docs/METHOD.md §2). With a feature cache the features of
the un-augmented images come from disk (``cache_draws`` noise draws per image) and flips are applied
to features and mask together. Logits are compared with masks at the data size. The validation
slice is scored every ``eval_every`` epochs; the engine keeps the best head. An epoch is
``ceil(N / batch)`` steps of full batches (the last batch of a pass over the N images is filled from
the next pass, so passes and epochs drift apart by a fraction of a batch per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from dtlabel import dist, seeds
from dtlabel.data.base import LabeledSource
from dtlabel.data.streams import IndexStream, PositionedDataset
from dtlabel.data.transforms import SegmentationDataset, build_transform
from dtlabel.schema import Optim, section
from dtlabel.engine import LoopConfig, Task
from dtlabel.errors import ConfigError
from dtlabel.evaluation import evaluate_segmentation
from dtlabel.heads import Head, head_options, image_score
from dtlabel.heads.reading import TeacherFeatures, head_predictor


def check_head_options(hc: DictConfig) -> None:
    """The one check of the ``head`` section its schema cannot make (types and ranges are the
    schema's, :class:`dtlabel.schema.HeadSection`)."""
    if hc.get("scale") is not None and not 0 < float(hc.scale[0]) <= float(hc.scale[1]):
        raise ConfigError(f"head.scale={list(hc.scale)}: expected [min, max] with 0 < min <= max, or null")


def head_kwargs(hc: DictConfig, kind: str) -> dict[str, Any]:
    """The architecture options of ``kind`` from the head config section (``head.<kind with _>``)."""
    section = hc.get(kind.replace("-", "_"))
    opts = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    allowed = head_options(kind)
    return {k: v for k, v in dict(opts).items() if k in allowed}  # type: ignore[arg-type]


class HeadLoss(torch.nn.Module):
    """A head's training objective as a module's forward, so that DDP can wrap it (gradients are
    synchronised only through a wrapped module's forward)."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: dict[str, torch.Tensor], masks: torch.Tensor, ignore_index: int,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return self.head.loss(features, masks, ignore_index, generator=generator)


class HeadTask(Task):
    """Train ``head`` on ``label_ids`` of ``source`` at ``size``; validation on ``val_ids``."""

    name = "train-head"
    config_prefix = "head"

    def __init__(self, head: Head, feats: TeacherFeatures, source: LabeledSource, label_ids: Sequence[str],
                 val_ids: Sequence[str], size: tuple[int, int], hc: DictConfig, seed: int, num_workers: int = 0) -> None:
        self.head, self.model = head, HeadLoss(head)
        self.feats, self.source, self.size, self.hc = feats, source, size, hc
        self.val_ids, self.seed, self.num_workers = list(val_ids), int(seed), int(num_workers)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.cached = feats.cache is not None
        scale = tuple(float(s) for s in hc.scale) if hc.get("scale") is not None and not self.cached else None
        transform = build_transform(size, train=not self.cached, hflip=bool(hc.hflip), scale=scale,
                                    ignore_index=source.ignore_index)
        self.n = len(label_ids)
        self.dataset = PositionedDataset(SegmentationDataset(source, list(label_ids), transform), seed)
        self.batch = min(int(hc.batch_size), self.n)
        if self.batch % self.world:
            raise ConfigError(f"head.batch_size {self.batch} must be divisible by the number of processes {self.world}")
        self.epoch_steps = math.ceil(self.n / self.batch)
        self.total = int(hc.steps) if hc.get("steps") is not None else int(hc.epochs) * self.epoch_steps
        self.micro = int(hc.micro_batch) if hc.get("micro_batch") and not head.batch_statistics else self.batch
        self.images_per_step = self.batch

    def loop_config(self, amp: str, max_minutes: float | None) -> LoopConfig:
        hc, head = self.hc, self.head
        optim = section(hc.optim, Optim)
        return LoopConfig.of(
            optim, steps=self.total, lr=head.default_lr if optim.lr is None else optim.lr,
            weight_decay=head.default_weight_decay if optim.weight_decay is None else optim.weight_decay,
            amp=amp, seed=self.seed, log_every=int(hc.log_every),
            eval_every=self.epoch_steps * int(hc.eval_every) if self.val_ids else 0,
            select=str(hc.select), checkpoint_every=self.epoch_steps, keep_last=1, max_minutes=max_minutes)

    def batches(self, start_step: int) -> Iterator[Any]:
        sampler = IndexStream(self.n, self.batch, self.seed, start_step, self.total, self.rank, self.world)
        return iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers))

    def micro_batches(self, batch: Any, step: int) -> list[tuple[Any, float]]:
        """Teacher features of the whole batch, then parts of ``head.micro_batch`` images."""
        positions, idx, images, masks = batch
        g = torch.Generator().manual_seed(seeds.step(self.seed, step, self.rank))
        passes = [int(p) // self.n for p in positions]
        streams = [(e % int(self.hc.cache_draws)) + 1 if self.cached else e + 1 for e in passes]
        f = self.feats(images, [seeds.noise(self.seed, s, int(i)) for s, i in zip(streams, idx)])
        masks = masks.to(self.head.device)
        if self.cached and bool(self.hc.hflip):  # augmentation in feature space: flip maps and mask together
            flip = (torch.rand(images.shape[0], generator=g) < 0.5).to(self.head.device)
            f = {k: torch.where(flip[:, None, None, None], v.flip(-1), v) for k, v in f.items()}
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        b = masks.shape[0]
        return [({"features": {k: v[s:s + self.micro] for k, v in f.items()}, "masks": masks[s:s + self.micro],
                  "generator": g}, min(self.micro, b - s) / b) for s in range(0, b, self.micro)]

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return model(batch["features"], batch["masks"], self.source.ignore_index, generator=batch["generator"])

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"epoch": step // self.epoch_steps}

    def evaluate(self, step: int) -> dict[str, Any] | None:
        if not self.val_ids:
            return None
        ev = evaluate_segmentation(head_predictor(self.head, self.feats, self.seed, self.size), self.source,
                                   self.val_ids, self.size, int(self.hc.eval_batch_size), num_workers=self.num_workers,
                                   rank=self.rank, world=self.world)
        s = ev.cm.summary(list(self.source.class_names))
        return {"val_miou": s["miou"], "val_pixel_accuracy": s["pixel_accuracy"], "val_per_class_iou": s["per_class_iou"]}


def score_head(head: Head, feats: TeacherFeatures, source: LabeledSource, ids: Sequence[str], size: tuple[int, int],
               batch_size: int, seed: int, keep: int = 0, num_workers: int = 0, progress: bool = False) -> Any:
    """:class:`~dtlabel.evaluation.Evaluation` of a head on ``ids`` (evaluation noise), with the mean
    image uncertainty score; sharded over the processes under torchrun."""
    return evaluate_segmentation(head_predictor(head, feats, seed, size), source, ids, size, batch_size, keep=keep,
                                 num_workers=num_workers, rank=dist.rank(), world=dist.world_size(), score=image_score,
                                 progress=progress)
