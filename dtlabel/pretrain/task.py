"""The pretrain task: feature distillation (and mix distillation) from a frozen teacher, for the engine.

Each step takes a batch of the label-free pool's deterministic stream at the data size, flips it
(horizontal flip is the only augmentation, as in the paper), computes the teacher's features of the
flipped images **online with fresh noise** (pass ``e`` over the pool uses noise stream ``e + 1``: the
noise acts as feature-space augmentation, docs/METHOD.md §2) at the teacher reading the head uses,
or, with ``pretrain.cache_draws=K``, stream ``e mod K + 1`` read through a feature cache, so that
each flipped or unflipped image's K draws are computed once and later passes skip the teacher,
and regresses them with ``L_feat = L_MSE + at_weight * L_AT`` (:mod:`dtlabel.pretrain.losses`).
With a head (mix distillation) the head's probabilities on the same teacher features are distilled
into class logits on the finest regressor level: ``L_mix = L_feat + kd_weight * KD(tau)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from dtlabel import dist, seeds
from dtlabel.data.streams import IndexStream, PositionedDataset
from dtlabel.schema import Optim, section
from dtlabel.engine import LoopConfig, Task
from dtlabel.errors import ConfigError
from dtlabel.heads.reading import TeacherFeatures
from dtlabel.losses import kd_loss
from dtlabel.pretrain.losses import feature_distillation_loss
from dtlabel.pretrain.model import DistillationNet


class PretrainTask(Task):
    """Train ``net`` to regress ``feats`` of the images of ``images`` (``(3, H, W)`` in [-1, 1])."""

    name = "pretrain"
    config_prefix = "pretrain"

    def __init__(self, net: DistillationNet, feats: TeacherFeatures, images: Dataset, pc: DictConfig, seed: int,
                 device: torch.device, num_workers: int = 0, head: Any = None) -> None:
        self.model, self.feats, self.pc, self.head = net, feats, pc, head
        self.seed, self.device, self.num_workers = int(seed), device, int(num_workers)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.n = len(images)
        self.dataset = PositionedDataset(images, seed)
        self.batch = int(pc.batch_size)
        if self.batch % self.world:
            raise ConfigError(f"pretrain.batch_size {self.batch} must be divisible by the number of processes {self.world}")
        if self.batch // self.world < 2:
            raise ConfigError(f"pretrain.batch_size {self.batch} over {self.world} process(es) leaves one image per process; "
                              "the regressor's BatchNorm needs at least 2")
        # a regressor level no teacher map (and no logit head) reads gets no gradient: DDP must know
        used = set(net.levels.values()) | ({0} if net.logits is not None else set())
        self.find_unused_parameters = bool({0, 1, 2} - used)
        self.epoch_steps = math.ceil(self.n / self.batch)
        self.total = int(pc.steps) if pc.get("steps") is not None else int(pc.epochs) * self.epoch_steps
        self.images_per_step = self.batch
        self.lr = float(pc.optim.lr)
        self.cache_draws = int(pc.get("cache_draws") or 0)  # 0: fresh noise every pass

    def loop_config(self, amp: str, max_minutes: float | None) -> LoopConfig:
        pc = self.pc
        return LoopConfig.of(section(pc.optim, Optim), steps=self.total, amp=amp, seed=self.seed,
                             log_every=int(pc.log_every), checkpoint_every=int(pc.checkpoint_every),
                             keep_last=int(pc.keep_last), keep_every=int(pc.get("keep_every") or 0),
                             max_minutes=max_minutes)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The regressor, projections (and logits) first, then the backbone as ``encoder``."""
        encoder = self.model.exported_backbone  # a ViT's pyramid trains with the regressor
        own = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        return {"regressor": rest, "encoder": [p for p in encoder.parameters() if p.requires_grad]}

    def batches(self, start_step: int) -> Iterator[Any]:
        sampler = IndexStream(self.n, self.batch, self.seed, start_step, self.total, self.rank, self.world)
        return iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers))

    def targets(self, images: torch.Tensor, positions: Any, indices: Any) -> dict[str, Any]:
        """Teacher maps (and the head's log-probabilities for mix) of ``images (B, 3, H, W)``."""
        passes = [int(p) // self.n for p in positions]  # with a cache, pass e re-reads noise draw e mod K
        streams = [1 + (e % self.cache_draws if self.cache_draws else e) for e in passes]
        noise = [seeds.noise(self.seed, stream, int(i)) for stream, i in zip(streams, indices)]
        with torch.no_grad():
            teacher = self.feats(images, noise)
        return {"teacher": teacher, "soft": self.soft_labels(teacher, images.shape[-2:])}

    @torch.no_grad()
    def soft_labels(self, teacher: dict[str, torch.Tensor], size: Any) -> torch.Tensor | None:
        """Mix distillation's target: the head's log-probabilities at 1/4 of ``size``, or None."""
        if self.head is None:
            return None
        probs, _ = self.head.predict(teacher, (int(size[0]) // 4, int(size[1]) // 4))
        return probs.clamp_min(1e-8).log()

    @torch.no_grad()
    def picture_batch(self, images: Dataset, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` pool images and their teacher maps (evaluation noise), for ``features.png``."""
        x = torch.stack([images[i] for i in range(n)])
        return x, self.feats(x, [seeds.noise(self.seed, seeds.EVAL_STREAM, i) for i in range(n)])

    def micro_batches(self, batch: Any, step: int) -> list[tuple[Any, float]]:
        positions, indices, images = batch
        if bool(self.pc.hflip):
            g = torch.Generator().manual_seed(seeds.step(self.seed, step, self.rank))
            flip = torch.rand(images.shape[0], generator=g) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return [({"images": images.to(self.device), **self.targets(images, positions, indices)}, 1.0)]

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        maps, logits = model(batch["images"])
        pc = self.pc
        losses = feature_distillation_loss(maps, batch["teacher"], str(pc.teacher_norm), float(pc.at_weight),
                                           float(pc.mse_weight))
        if logits is not None and batch["soft"] is not None:
            kd = kd_loss(logits.float(), batch["soft"], float(pc.tau))
            losses["kd"] = kd
            losses["loss"] = losses["loss"] + float(pc.kd_weight) * kd
        return losses

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"epoch": step // self.epoch_steps}
