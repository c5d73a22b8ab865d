"""The train-student task: an smp student on pseudo-labels and/or real labels, for the engine.

Losses (docs/METHOD.md §4):
- real labels: ``CE + dice_weight * Dice`` at ``data.size``;
- pseudo-labels, ``student.synth_loss=soft`` (default): knowledge distillation with temperature
  ``tau`` on the head's stored logits, ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, at the
  **stored logits' resolution** (the student's logits are area-averaged down there);
- pseudo-labels, ``synth_loss=hard``: per-pixel CE on the pseudo-labels weighted by ``1 - uncertainty``.
A batch mixing both is one forward over their concatenation, each part weighted by its share.

Batches: real pairs come from the deterministic index stream (albumentations seeded by the stream
position), synth samples from the shard stream of ``SynthIterableDataset`` (reshuffled every epoch
of ``epoch_steps`` steps; a resume inside an epoch skips that epoch's first batches), augmented in
torch with a generator seeded by the step. Every epoch the student is scored on the validation
slice (model selection) and on the test split (curves only).
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
from dtlabel.device import amp_dtype, autocast
from dtlabel.schema import Optim, section
from dtlabel.engine import LoopConfig, Task
from dtlabel.errors import ConfigError, DataError
from dtlabel.evaluation import Evaluation, evaluate_segmentation
from dtlabel.losses import ce_dice_loss, kd_loss, weighted_ce_loss
from dtlabel.students.model import StudentSpec, patch_size, resolve_arch
from dtlabel.synth.augment import augment_synth, collate_synth


def check_student_options(sc: DictConfig) -> None:
    """The one check of the ``student`` section its schema cannot make (types, choices and ranges
    are the schema's, :class:`dtlabel.schema.StudentSection`)."""
    if sc.get("scale") is not None and not 0 < float(sc.scale[0]) <= float(sc.scale[1]):
        raise ConfigError(f"student.scale={list(sc.scale)}: expected [min, max] with 0 < min <= max, or null")


def smp_kwargs(sc: DictConfig) -> dict[str, Any]:
    """The extra ``smp.create_model`` keyword arguments of the student section: the preset's for
    ``student.arch`` (``student.decoders``), then the user's ``student.kwargs`` over them."""
    decoders = OmegaConf.to_container(sc.decoders, resolve=True) if sc.get("decoders") is not None else {}
    arch = resolve_arch(str(sc.arch))
    preset = next((dict(v) for k, v in dict(decoders).items() if resolve_arch(k) == arch), {})  # type: ignore[call-overload]
    kw = OmegaConf.to_container(sc.kwargs, resolve=True) if sc.get("kwargs") is not None else {}
    return {**preset, **dict(kw)}  # type: ignore[arg-type]


def check_input_size(model: torch.nn.Module, spec: StudentSpec, size: tuple[int, int]) -> int:
    """One forward + backward pass at ``size`` so that an unsupported resolution fails before
    training; returns the number of parameters that get no gradient (e.g. encoder stages beyond
    ``encoder_depth`` in timm encoders; DDP must then look for unused parameters)."""
    patch = patch_size(model)
    grid = 2 if spec.arch == "DPT" else 1  # DPT's reassembly halves the patch grid once (stride 32)
    if patch is not None and (size[0] % (patch[0] * grid) or size[1] % (patch[1] * grid)):
        step = (patch[0] * grid, patch[1] * grid)
        fit = [max(step[0], size[0] // step[0] * step[0]), max(step[1], size[1] // step[1] * step[1])]
        halves = f" and {spec.arch} halves the patch grid once" if grid > 1 else ""
        raise ConfigError(f"data.size={list(size)}: {spec.encoder_name} cuts images into {patch[0]}x{patch[1]} patches"
                          f"{halves}; use a size divisible by {step[0]}x{step[1]} (e.g. data.size={fit})")
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, 3, *size))
        out.float().sum().backward()
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:160]
        raise ConfigError(f"data.size={list(size)} does not suit {spec.arch}/{spec.encoder_name} ({msg}); "
                          "use sizes divisible by 2**encoder_depth (32 for depth 5)") from None
    model.train(was)
    if tuple(out.shape[-2:]) != tuple(size):
        raise ConfigError(f"{spec.arch}/{spec.encoder_name} with {spec.smp_kwargs} predicts at {list(out.shape[-2:])} "
                          f"for inputs of {list(size)}; choose student.kwargs that keep the input resolution")
    unused = sum(1 for p in model.parameters() if p.requires_grad and p.grad is None)
    model.zero_grad(set_to_none=True)
    return unused


def score_student(model: torch.nn.Module, source: LabeledSource, ids: Sequence[str], size: tuple[int, int],
                  batch_size: int, device: torch.device, amp: str = "auto", keep: int = 0,
                  num_workers: int = 0, progress: bool = False) -> Evaluation:
    """:class:`~dtlabel.evaluation.Evaluation` of a student on ``ids`` (sharded under torchrun)."""
    dtype = amp_dtype(device, amp)
    was = model.training
    model.eval()

    def predict(images: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        with autocast(device, dtype):
            logits = model(images.to(device))
        return logits.float().argmax(1), None

    try:
        return evaluate_segmentation(predict, source, ids, size, batch_size, keep=keep, num_workers=num_workers,
                                     rank=dist.rank(), world=dist.world_size(), progress=progress)
    finally:
        model.train(was)


class StudentTask(Task):
    """Distil pseudo-labels (``synth``, a SynthSet) and/or ``label_ids`` into ``model``."""

    name = "train-student"
    config_prefix = "student"

    def __init__(self, model: torch.nn.Module, source: LabeledSource, label_ids: Sequence[str], synth: Any,
                 val_ids: Sequence[str], test_ids: Sequence[str], size: tuple[int, int], sc: DictConfig, seed: int,
                 device: torch.device, amp: str = "auto", num_workers: int = 0, unused_parameters: int = 0) -> None:
        from dtlabel.synth import SynthIterableDataset

        self.model, self.source, self.synth, self.size, self.sc = model, source, synth, size, sc
        self.val_ids, self.test_ids, self.seed, self.device = list(val_ids), list(test_ids), int(seed), device
        self.amp, self.num_workers = amp, int(num_workers)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.find_unused_parameters = unused_parameters > 0
        self.names = list(source.class_names)
        self.ignore = source.ignore_index
        bs = int(sc.batch_size)
        if synth is not None and label_ids:
            self.n_real = min(bs - 1, max(1, round(bs * float(sc.real_ratio))))
        else:
            self.n_real = bs if label_ids else 0
        self.n_syn = bs - self.n_real
        self.n_labels = len(label_ids)
        self.scale = tuple(float(s) for s in sc.scale) if sc.get("scale") is not None else None
        self.real = None
        if self.n_real:
            tf = build_transform(size, train=True, hflip=bool(sc.hflip), scale=self.scale, ignore_index=self.ignore)
            self.real = PositionedDataset(SegmentationDataset(source, list(label_ids), tf), seed)
        self.synth_ds = None
        if synth is not None:
            if len(synth) < self.n_syn * self.world:
                raise DataError(f"--synth has {len(synth)} samples, fewer than one batch ({self.n_syn} x {self.world} "
                                "processes); lower student.batch_size")
            self.synth_ds = SynthIterableDataset(synth, transform=None, shuffle_buffer=int(sc.shuffle_buffer), seed=seed)
        if sc.get("epoch_steps") is not None:
            self.epoch_steps = int(sc.epoch_steps)
        elif synth is not None:
            self.epoch_steps = max(1, len(synth) // (self.n_syn * self.world))
        else:
            self.epoch_steps = max(1, math.ceil(self.n_labels / (self.n_real * self.world)))
        self.total = int(sc.epochs) * self.epoch_steps
        self.images_per_step = bs * self.world

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The decoder and head first (their lr is the one logged), then the encoder
        (``optim.encoder_lr_mult``: a pretrained ``--backbone`` under a new decoder)."""
        encoder = getattr(self.model, "encoder", None)
        if encoder is None:
            return super().parameter_groups()
        own = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        return {"decoder": rest, "encoder": [p for p in encoder.parameters() if p.requires_grad]}

    @property
    def mode(self) -> str:
        return "+".join(p for p, on in (("synth", self.synth is not None), ("real", self.n_labels > 0)) if on)

    def loop_config(self, max_minutes: float | None) -> LoopConfig:
        sc = self.sc
        return LoopConfig.of(section(sc.optim, Optim), steps=self.total, amp=self.amp, seed=self.seed,
                             log_every=int(sc.log_every), eval_every=self.epoch_steps, select=str(sc.select),
                             checkpoint_every=self.epoch_steps, keep_last=1, max_minutes=max_minutes)

    # ------------------------------------------------------------------ data
    def batches(self, start_step: int) -> Iterator[tuple[Any, Any]]:
        real_it = None
        if self.real is not None:
            sampler = IndexStream(self.n_labels, self.n_real * self.world, self.seed, start_step, self.total,
                                  self.rank, self.world)
            real_it = iter(DataLoader(self.real, batch_sampler=sampler, num_workers=self.num_workers))
        syn_it = self._synth_stream(start_step) if self.synth_ds is not None else None
        for _ in range(start_step, self.total):
            real = next(real_it)[2:] if real_it is not None else None  # drop (position, index)
            yield real, (next(syn_it) if syn_it is not None else None)

    def _synth_stream(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch = start_step // self.epoch_steps
        while True:
            for k, batch in enumerate(self._synth_epoch(epoch)):
                if epoch * self.epoch_steps + k >= start_step:
                    yield batch
            epoch += 1

    def _synth_epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The ``epoch_steps`` synth batches of one epoch (passes reshuffled with ``epoch * 1000 + k``)."""
        produced, k = 0, 0
        while produced < self.epoch_steps:
            self.synth_ds.set_epoch(epoch * 1000 + k)
            got = 0
            for batch in DataLoader(self.synth_ds, batch_size=self.n_syn, num_workers=self.num_workers,
                                    collate_fn=collate_synth, drop_last=True):
                got += 1
                produced += 1
                yield batch
                if produced == self.epoch_steps:
                    return
            if got == 0:
                raise DataError("the synth set yields no full batch on this process; lower student.batch_size")
            k += 1

    # ------------------------------------------------------------------ objective
    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        real, syn_batch = batch
        sc, images = self.sc, []
        if real is not None:
            images.append(real[0].to(self.device))
        syn = None
        if syn_batch is not None:
            g = torch.Generator().manual_seed(seeds.step(self.seed, step, self.rank))
            syn = augment_synth(syn_batch, self.size, bool(sc.hflip), self.scale, self.ignore, g, self.device)
            images.append(syn["image"])
        x = torch.cat(images) if len(images) > 1 else images[0]
        logits = model(x).float()
        bs = x.shape[0]
        total = logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        if real is not None:
            r = ce_dice_loss(logits[:self.n_real], real[1].to(self.device), self.ignore, float(sc.dice_weight))
            total = total + r["loss"] * (self.n_real / bs)
            parts.update(real=r["loss"], ce=r["ce"], dice=r["dice"])
        if syn is not None:
            s_logits = logits[bs - self.n_syn:]
            if str(sc.synth_loss) == "soft":
                s = kd_loss(s_logits, syn["logits"], float(sc.tau), valid=syn["logits_valid"])
            else:
                s = weighted_ce_loss(s_logits, syn["label"], 1.0 - syn["uncertainty"], self.ignore)
            total = total + s * (self.n_syn / bs)
            parts["synth"] = s
        return {"loss": total, **parts}

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"epoch": step // self.epoch_steps}

    def evaluate(self, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {"val_miou": None}
        bs = int(self.sc.eval_batch_size)
        if self.val_ids:
            v = score_student(self.model, self.source, self.val_ids, self.size, bs, self.device, self.amp,
                              num_workers=self.num_workers).cm.summary(self.names)
            out.update(val_miou=v["miou"], val_pixel_accuracy=v["pixel_accuracy"], val_per_class_iou=v["per_class_iou"])
        t = score_student(self.model, self.source, self.test_ids, self.size, bs, self.device, self.amp,
                          num_workers=self.num_workers).cm.summary(self.names)
        out.update(test_miou=t["miou"], test_per_class_iou=t["per_class_iou"])
        return out
