"""Pretraining on the teacher's own samples (``pretrain.source=samples``): DreamTeacher's GAN path.

A GAN records features of what it draws, so no real image is needed: every step draws its batch
from the teacher (``Teacher.sample``: images and their exact maps in one pass) and the backbone
regresses those maps, as :class:`~dtlabel.pretrain.task.PretrainTask` does for pool images. The
stream of samples is infinite, so ``pretrain.steps`` sets the length (no epochs, no flips: each
sample is seen once). Sample ``i`` of the run (``i = step x batch + k``) is drawn with seed
``seed + i`` (``seeds.synth_sample``), so a resumed run draws the same samples and ends with the
uninterrupted bytes; under DDP each rank draws its own slice of the step's indices.

Any family that can sample works (a diffusion teacher pays its sampler's steps per image); a GAN is
the one for which it is cheap: one generator pass per sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dtlabel import seeds
from dtlabel.errors import ConfigError
from dtlabel.heads.reading import TeacherFeatures
from dtlabel.pretrain.model import DistillationNet
from dtlabel.pretrain.task import PretrainTask


class SampledPretrainTask(PretrainTask):
    """Regress the maps of batches the teacher draws, at the data size ``size`` ``(H, W)``."""

    def __init__(self, net: DistillationNet, feats: TeacherFeatures, pc: DictConfig, seed: int, device: torch.device,
                 size: tuple[int, int], head: Any = None) -> None:
        if pc.get("steps") is None:
            raise ConfigError("pretrain.source=samples draws an endless stream: set pretrain.steps (no epochs)")
        if not feats.teacher.can_sample:
            raise ConfigError(f"pretrain.source=samples needs a teacher that samples; the {feats.teacher.family} "
                              f"teacher in {feats.teacher.root} cannot (use pretrain.source=images)")
        super().__init__(net, feats, _Endless(), pc, seed, device, 0, head)
        self.size = (int(size[0]), int(size[1]))
        self.epoch_steps = self.total  # one pass: each sample is drawn once

    def batches(self, start_step: int) -> Iterator[Any]:
        per = self.batch // self.world
        for step in range(start_step, self.total):
            first = step * self.batch + self.rank * per
            yield torch.arange(first, first + per)

    def draw(self, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Samples ``indices`` (consecutive) of the run: images at the data size and their teacher maps."""
        out = self.feats.teacher.sample(len(indices), seed=seeds.synth_sample(self.seed, int(indices[0])),
                                        batch_size=self.feats.chunk, output_device=None)
        images = out.images.float()
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return images.clamp(-1, 1), out.features

    def micro_batches(self, batch: Any, step: int) -> list[tuple[Any, float]]:
        images, teacher = self.draw(batch)
        return [({"images": images.to(self.device), "teacher": teacher,
                  "soft": self.soft_labels(teacher, images.shape[-2:])}, 1.0)]

    @torch.no_grad()
    def picture_batch(self, images: Any, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` samples outside the training stream (indices from 2**31) and their maps."""
        images, teacher = self.draw(torch.arange(2 ** 31, 2 ** 31 + n))
        return images.cpu(), teacher

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"samples_seen": (step + 1) * self.batch}


class _Endless:
    """The dataset stand-in of a sampled run: its length is the batch-size check's only reader."""

    def __len__(self) -> int:
        return 1
