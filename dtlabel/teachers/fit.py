"""Training a DDPM teacher (diffusers ``UNet2DModel`` + ``DDPMScheduler``) on unlabeled images.

:class:`FitTask` is the engine's task: each step takes a batch of the deterministic image stream,
flips it, draws noise and timesteps from a generator seeded by ``(seed, step, rank)`` and regresses
the noise (or velocity) with MSE, optionally Min-SNR-gamma weighted (``fit.snr_gamma``); an EMA of
the weights is kept and is what gets exported. So the images, flips, noise and timesteps of step
``s`` depend only on ``(seed, s)`` and a run resumed from a checkpoint ends with the same weights as
an uninterrupted one. Output: a diffusers ``DDPMPipeline`` folder that plain diffusers loads with
``DDPMPipeline.from_pretrained``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from dtlabel import dist, seeds
from dtlabel.data.streams import IndexStream, PositionedDataset
from dtlabel.device import training_amp
from dtlabel.engine import CheckpointStore, LoopConfig, Task, train
from dtlabel.schema import Optim, section
from dtlabel.errors import ConfigError
from dtlabel.io import atomic_dir, write_json
from dtlabel.teachers.loading import TEACHER_META
from dtlabel.teachers.fit_arch import (
    ARCHITECTURE,
    build_unet,
    init_architecture,
    load_init_weights,
    make_unet,
    read_architecture,
    run_architecture,
    scheduler_settings,
    teacher_size,
    unet_from_config,
)

log = logging.getLogger(__name__)

__all__ = ["FitResult", "FitTask", "build_unet", "checkpoint_steps", "export_checkpoint",
           "fit_amp", "fit_ddpm", "init_architecture", "read_architecture", "teacher_size", "unet_from_config"]


@dataclass
class FitResult:
    teacher_dir: Path
    steps: int
    final_loss: float
    images_per_second: float
    stopped_early: bool
    architecture: dict[str, Any] | None = None  # fit.init_from runs: see init_architecture
    amp: str = "auto"                            # the precision it trained in (fit_amp)
    schedule: str = "steps"                      # the lr schedule it followed (fit.optim.schedule, auto resolved)
    encoder: Any = None                          # a GAN's second stage (the engine's TrainResult), or None


class FitTask(Task):
    """Denoising-score matching on a stream of ``(3, H, W)`` images in [-1, 1], with an EMA copy."""

    name = "fit-teacher"
    config_prefix = "fit"
    model_key = "unet"  # checkpoint files unet.safetensors + ema.safetensors, as before the engine

    def __init__(self, unet: torch.nn.Module, scheduler: Any, images: Dataset, cfg: DictConfig, seed: int,
                 device: torch.device, num_workers: int = 0) -> None:
        from diffusers.training_utils import EMAModel

        self.model, self.scheduler, self.images, self.cfg = unet, scheduler, images, cfg
        self.seed, self.device, self.num_workers = int(seed), device, int(num_workers)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.batch = int(cfg.batch_size)
        self.images_per_step = self.batch
        # on CUDA the EMA step as a few fused multi-tensor ops, not one small kernel per tensor (224 for the
        # cpu preset's UNet: the per-step host work that bounded fit-teacher on a GPU); the same values, and
        # on a CPU the loop is the faster one (benchmarks/ema_step.py)
        self.ema = EMAModel(unet.parameters(), decay=float(cfg.ema_decay), use_ema_warmup=True, power=0.75,
                            foreach=device.type == "cuda")
        gamma = cfg.get("snr_gamma")
        self.snr_gamma = None if gamma is None else float(gamma)

    def batches(self, start_step: int) -> Iterator[Any]:
        sampler = IndexStream(len(self.images), self.batch, self.seed, start_step, int(self.cfg.steps),
                              self.rank, self.world)
        return iter(DataLoader(PositionedDataset(self.images, self.seed), batch_sampler=sampler,
                               num_workers=self.num_workers))

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        _, _, x0 = batch
        x0 = x0.to(self.device)
        g = torch.Generator().manual_seed(seeds.step(self.seed, step, self.rank))
        if bool(self.cfg.hflip):
            flip = torch.rand(x0.shape[0], generator=g) < 0.5
            x0 = torch.where(flip.to(self.device)[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g).to(self.device)
        xt = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        pred = model(xt, t).sample
        if self.snr_gamma is None:
            return {"loss": F.mse_loss(pred.float(), target)}
        per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        return {"loss": (min_snr_weights(self.scheduler, t, self.snr_gamma) * per_sample).mean()}

    def after_step(self, step: int) -> None:
        self.ema.step(self.model.parameters())

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"ema": {f"p{i}": p for i, p in enumerate(self.ema.shadow_params)}}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"ema_step": int(self.ema.optimization_step)}

    def load_checkpoint(self, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
        ema = tensors["ema"]
        self.ema.shadow_params = [ema[f"p{i}"].to(self.device) for i in range(len(self.ema.shadow_params))]
        self.ema.optimization_step = int(state["ema_step"])

    def ema_model(self, size: Sequence[int], arch: dict[str, Any] | None) -> torch.nn.Module:
        """A fresh UNet holding the EMA weights (what is exported)."""
        export = make_unet(self.cfg.model, arch, size)
        self.ema.copy_to(export.parameters())
        return export.eval()


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights ``(B,)`` of timesteps ``t`` (Hang et al., 2023).

    SNR(t) = alpha_bar / (1 - alpha_bar). Clamping it at ``gamma`` stops the nearly clean, high-SNR
    timesteps from dominating the gradient: ``min(SNR, gamma) / SNR`` for epsilon prediction and
    ``min(SNR, gamma) / (SNR + 1)`` for v-prediction (both the weight that turns the plain MSE into
    the clamped x0 loss). The weights are at most 1, so the loss reads lower than plain MSE.
    """
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1 - alpha_bar)
    clamped = torch.clamp(snr, max=gamma)
    return clamped / snr if scheduler.config.prediction_type == "epsilon" else clamped / (snr + 1)


def fit_amp(amp: str, cfg: DictConfig, device: torch.device) -> str:
    """The precision fit-teacher trains in: the ``amp`` setting, except that under ``amp=auto`` the
    ``fit.cpu_bf16`` switch trains in bfloat16 autocast on a CPU with native bf16 instructions
    (avx512_bf16 / amx_bf16: a step in 0.53 of the float32 time with the same teacher quality at equal
    steps, docs/RESULTS.md). Where the CPU lacks them bf16 is emulated and many times slower, so
    there it stays float32; ``amp=off`` forces float32 anywhere.
    """
    chosen = training_amp(amp, bool(cfg.get("cpu_bf16", False)), device)
    if chosen != str(amp):
        log.info("fit.cpu_bf16: training in bfloat16 autocast (this CPU has native bf16; amp=off for float32)")
    return chosen


def loop_config(cfg: DictConfig, seed: int, amp: str) -> LoopConfig:
    """The engine settings of the ``fit`` config section."""
    return LoopConfig.of(section(cfg.optim, Optim), steps=int(cfg.steps), amp=amp, seed=seed,
                         log_every=int(cfg.log_every), checkpoint_every=int(cfg.checkpoint_every),
                         keep_last=int(cfg.keep_last), keep_every=int(cfg.get("keep_every") or 0),
                         max_minutes=cfg.get("max_minutes"), loss_smoothing=0.98, allow_new_total=True)


def fit_ddpm(images: Dataset, out: Path, cfg: DictConfig, size: Sequence[int], device: torch.device,
             seed: int, amp: str = "auto", num_workers: int = 0, progress: bool = True) -> FitResult:
    """Train on ``images`` (a dataset of ``(3, H, W)`` tensors in [-1, 1]); write ``out/teacher``.

    ``cfg`` is the ``fit`` config section (steps, batch_size, lr, ... and ``model``). Checkpoints go to
    ``out/checkpoints`` every ``checkpoint_every`` steps; an existing checkpoint is resumed. A run
    stopped by ``fit.max_minutes`` still exports its teacher (``stopped_early``), and ``--resume``
    continues it.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    steps, batch = int(cfg.steps), int(cfg.batch_size)  # types and ranges of the section are its schema's (dtlabel.schema.FitSection)
    world = dist.world_size()
    if batch % world:
        raise ConfigError(f"fit.batch_size {batch} must be divisible by the number of processes {world}")
    torch.manual_seed(seed)
    arch = run_architecture(out, cfg)
    unet = make_unet(cfg.model, arch, size)
    if arch is not None:
        if CheckpointStore(out / "checkpoints").latest() is None:
            load_init_weights(unet, arch["init_from"])
            if dist.is_main() and not (out / ARCHITECTURE).is_file():
                write_json(out / ARCHITECTURE, arch)
        log.info("trained further from %s (%d steps before this run); fit.model is not used",
                 arch["init_from"], arch["init_steps"])
    unet = unet.to(device)
    scheduler = DDPMScheduler(**scheduler_settings(cfg, arch))
    task = FitTask(unet, scheduler, images, cfg, seed, device, num_workers)
    log.info("fit-teacher: UNet2DModel %.2fM parameters at %s, %d steps x batch %d on %s (%d process%s)",
             sum(p.numel() for p in unet.parameters()) / 1e6, "x".join(map(str, size)), steps, batch, device, world,
             "es" if world > 1 else "")
    amp = fit_amp(amp, cfg, device)
    result = train(task, loop_config(cfg, seed, amp), out, device, progress=progress)
    teacher_dir = out / "teacher"
    if dist.is_main():
        export = task.ema_model(size, arch)
        if str(cfg.get("export_dtype", "fp32")) == "fp16":
            export = export.half()  # half the disk size; teachers compute in float32 after loading
        with atomic_dir(teacher_dir) as tmp:
            DDPMPipeline(unet=export, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / TEACHER_META, _teacher_meta(result.steps, size, seed, arch))
    dist.barrier()
    return FitResult(teacher_dir, result.steps, result.loss_ema, result.images_per_second, result.stopped, arch, amp,
                     result.schedule)




def _teacher_meta(step: int, size: Sequence[int], seed: int, arch: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """``dtlabel_teacher.json``: total training steps (those of ``fit.init_from`` included)."""
    meta: dict[str, Any] = {"family": "ddpm", "trained_steps": int(step) + (arch["init_steps"] if arch else 0),
                            "size": [int(s) for s in size], "seed": int(seed)}
    if arch:
        meta.update(run_steps=int(step), init_from=Path(arch["init_from"]).name, init_steps=arch["init_steps"])
    return {**meta, **extra}



def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in a fit-teacher run folder."""
    return CheckpointStore(Path(run_dir) / "checkpoints").steps()


def export_checkpoint(run_dir: str | Path, step: int, out: str | Path, dtype: str = "fp32",
                      weights: str = "ema") -> Path:
    """Write checkpoint ``step`` of a fit-teacher run as a diffusers DDPM folder.

    ``weights="ema"`` exports the EMA weights (what fit-teacher exports), ``"raw"`` the trained
    weights themselves, to measure what the EMA buys. The run's ``config.yaml`` gives the UNet and
    scheduler settings. Used to measure how feature quality grows with training time
    (``fit.keep_every`` keeps the checkpoints to compare).
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / f"step_{int(step):07d}"
    if not (ckpt / "ema.safetensors").is_file():
        have = ", ".join(map(str, checkpoint_steps(run_dir))) or "none"
        raise ConfigError(f"{run_dir}: no complete checkpoint at step {step} (have: {have})")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    fit = cfg.fit
    size = teacher_size(fit, cfg.data)
    arch = read_architecture(run_dir)
    unet = make_unet(fit.model, arch, size)
    if weights == "raw":
        unet.load_state_dict(load_file(str(ckpt / "unet.safetensors")))
    elif weights == "ema":
        ema = load_file(str(ckpt / "ema.safetensors"))
        params = list(unet.parameters())
        if len(ema) != len(params):
            raise ConfigError(f"{ckpt}: {len(ema)} EMA tensors for a UNet with {len(params)} parameters; "
                              "the run's config.yaml does not match its checkpoints")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(ema[f"p{i}"])
    else:
        raise ConfigError(f"weights={weights}: expected ema or raw")
    unet.eval()
    if dtype == "fp16":
        unet = unet.half()
    scheduler = DDPMScheduler(**scheduler_settings(fit, arch))
    out = Path(out)
    with atomic_dir(out) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / TEACHER_META, _teacher_meta(int(step), size, int(cfg.seed), arch, from_run=run_dir.name,
                                                     weights=weights))
    return out
