"""Training a GAN teacher (``fit-teacher fit.family=gan``): the generator against its discriminator,
then the encoder that inverts real images, both on the engine.

Stage 1, :class:`GanTask`: FastGAN's generator and a plain discriminator (``gan_arch.py``), the
non-saturating loss with R1 on the real images (``fit.gan.r1_gamma``), and DiffAugment (Zhao et
al., 2020: colour, translation, cutout, applied to real and generated images alike, before the
discriminator sees them) because the pools are hundreds to a few thousand images, where a
discriminator memorises its reals within a few thousand steps. An EMA of the generator (fused
``torch._foreach_lerp_``) is what is exported. The engine takes one loss and one optimiser, so both
players train in the same step from the same state (simultaneous updates): the discriminator's loss
sees the generated images detached, the generator's loss reads the discriminator through its
*detached* parameters (``torch.func.functional_call``), so each loss moves only its own player, and
the two parameter groups (``generator``, ``discriminator``) share AdamW's settings of
``fit.gan.optim``. One forward of :class:`GanPair` per step, so DDP sees one call.

Stage 2, :class:`EncoderTask` (``fit.gan.encoder_steps``, in ``RUN/encoder/``): an encoder maps a
real image to the latent whose generated image matches it: pixel L1 + the discriminator's block
maps as perceptual L1 (``perceptual_weight``) + a latent cycle on samples, ``E(G(z)) = z``
(``cycle_weight``). So ``features(images) = G.features(E(images))`` serves train-head, synthesize
``--images``, pretrain and suggest unchanged. Randomness of step ``s`` comes from ``seeds.step``
alone: a resumed run ends with the uninterrupted bytes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from dtlabel import dist, seeds
from dtlabel.data.streams import IndexStream, PositionedDataset
from dtlabel.engine import LoopConfig, Task, train
from dtlabel.errors import ConfigError, ModelError, did_you_mean
from dtlabel.io import read_json, write_json
from dtlabel.schema import Optim, section
from dtlabel.teachers.fit import FitResult, fit_amp
from dtlabel.teachers.gan import save_gan
from dtlabel.teachers.gan_arch import Discriminator, Encoder, Generator, check_gan_size

log = logging.getLogger(__name__)

POLICIES = ("color", "translation", "cutout")


def diff_augment(x: torch.Tensor, policy: Sequence[str], g: torch.Generator) -> torch.Tensor:
    """DiffAugment of ``x (B, 3, H, W)`` in [-1, 1], differentiable, per-sample draws from ``g``.

    ``color``: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]; ``translation``: up to 1/8
    of each side, zero padded; ``cutout``: a zeroed rectangle of half of each side.
    """
    b, _, h, w = x.shape

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g).to(x.device, x.dtype)

    if "color" in policy:
        x = x + (rand(b, 1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(b, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (rand(b, 1, 1, 1) + 0.5) + mean
    if "translation" in policy:
        shift = torch.stack([(rand(b) * 2 - 1) * (w // 8), (rand(b) * 2 - 1) * (h // 8)], 1).round()
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2], theta[:, 1, 2] = -2 * shift[:, 0] / w, -2 * shift[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if "cutout" in policy:
        cy, cx = (rand(b) * h).long(), (rand(b) * w).long()
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        inside = ((ys - cy[:, None, None]).abs() < h // 4) & ((xs - cx[:, None, None]).abs() < w // 4)
        x = x * (~inside)[:, None].to(x.dtype)
    return x


def parse_policy(policy: Sequence[str]) -> tuple[str, ...]:
    """``fit.gan.diffaug`` (a list of policies; empty: no augmentation) checked against :data:`POLICIES`."""
    parts = tuple(str(p).strip() for p in policy)
    for p in parts:
        if p not in POLICIES:
            raise ConfigError(f"fit.gan.diffaug: unknown policy {p!r}{did_you_mean(p, POLICIES)}; "
                              f"choose from {', '.join(POLICIES)} (or [] for none)")
    return parts


class GanPair(torch.nn.Module):
    """Generator + discriminator as one module: ``forward(real, z, aug_seed, r1)`` -> the losses."""

    def __init__(self, generator: Generator, discriminator: Discriminator, policy: Sequence[str],
                 r1_gamma: float) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.policy, self.r1_gamma = tuple(policy), float(r1_gamma)

    def forward(self, real: torch.Tensor, z: torch.Tensor, aug_seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(int(aug_seed))
        fake = self.generator(z)
        real_aug = diff_augment(real, self.policy, g)
        if self.r1_gamma > 0:
            real_aug = real_aug.detach().requires_grad_(True)
        d_real = self.discriminator(real_aug).float()
        d_fake = self.discriminator(diff_augment(fake.detach(), self.policy, g)).float()
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        r1 = torch.zeros((), device=real.device)
        if self.r1_gamma > 0:
            grad, = torch.autograd.grad(d_real.sum(), real_aug, create_graph=True)
            r1 = grad.float().pow(2).sum(dim=(1, 2, 3)).mean() * (self.r1_gamma / 2)
        frozen = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        g_logits = torch.func.functional_call(self.discriminator, frozen, (diff_augment(fake, self.policy, g),))
        g_loss = F.softplus(-g_logits.float()).mean()
        return {"loss": d_loss + r1 + g_loss, "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "r1": r1.detach(), "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}


def _image_batches(images: Dataset, batch: int, seed: int, start_step: int, steps: int, num_workers: int) -> Iterator[Any]:
    sampler = IndexStream(len(images), batch, seed, start_step, steps, dist.rank(), dist.world_size())
    return iter(DataLoader(PositionedDataset(images, seed), batch_sampler=sampler, num_workers=num_workers))


def _flip(x: torch.Tensor, g: torch.Generator, on: bool) -> torch.Tensor:
    if not on:
        return x
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class GanTask(Task):
    """Stage 1: the adversarial game on a stream of ``(3, H, W)`` images in [-1, 1], with a generator EMA."""

    name = "fit-teacher (GAN)"
    config_prefix = "fit.gan"
    model_key = "gan"

    def __init__(self, pair: GanPair, images: Dataset, cfg: DictConfig, seed: int, device: torch.device,
                 num_workers: int = 0) -> None:
        self.model, self.images, self.cfg = pair, images, cfg
        self.seed, self.device, self.num_workers = int(seed), device, int(num_workers)
        self.batch = int(cfg.batch_size)
        self.images_per_step = self.batch
        self.ema_decay = float(cfg.gan.ema_decay)
        self.ema = [p.detach().clone() for p in pair.generator.parameters()]

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"generator": list(self.model.generator.parameters()),
                "discriminator": list(self.model.discriminator.parameters())}

    def batches(self, start_step: int) -> Iterator[Any]:
        return _image_batches(self.images, self.batch, self.seed, start_step, int(self.cfg.steps), self.num_workers)

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        _, _, real = batch
        g = torch.Generator().manual_seed(seeds.step(self.seed, step, dist.rank()))
        real = _flip(real, g, bool(self.cfg.hflip)).to(self.device)
        z = torch.randn((real.shape[0], self.model.generator.z_dim), generator=g).to(self.device)
        return model(real, z, int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g)))

    def after_step(self, step: int) -> None:
        decay = min(self.ema_decay, (1 + step) / (10 + step))  # a short warm-up, as diffusers' EMA
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.generator.parameters()], 1 - decay)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"ema": {f"p{i}": p for i, p in enumerate(self.ema)}}

    def load_checkpoint(self, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
        self.ema = [tensors["ema"][f"p{i}"].to(self.device) for i in range(len(self.ema))]

    def ema_generator(self) -> Generator:
        """A fresh generator holding the EMA weights (what is exported), its batch-norm statistics
        measured anew on those weights (:func:`recalibrate_batch_norm`), frozen, in eval mode.

        The trained generator's running statistics belong to its raw weights; read with the EMA
        weights they washed the samples out (measured on the default data after 8932 steps: pale
        colour fields where the same weights on their own batch statistics draw saturated shapes)."""
        gen = Generator(**self.model.generator.kwargs).to(self.device)
        with torch.no_grad():
            for p, e in zip(gen.parameters(), self.ema):
                p.copy_(e)
        recalibrate_batch_norm(gen, seeds.step(self.seed, 0, 3_000), self.device)
        return gen.eval().requires_grad_(False)


def recalibrate_batch_norm(gen: Generator, seed: int, device: torch.device, batches: int = 16, batch: int = 32) -> None:
    """Set ``gen``'s batch-norm running statistics to their average over ``batches`` batches of
    ``batch`` latents drawn from ``seed`` (train-mode passes, no gradients): the statistics of the
    weights it holds, the same bytes every time."""
    norms = [m for m in gen.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes
    g = torch.Generator().manual_seed(int(seed))
    gen.train()
    with torch.no_grad():
        for _ in range(batches):
            gen(torch.randn((batch, gen.z_dim), generator=g).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    gen.eval()


class EncoderTask(Task):
    """Stage 2: the encoder that inverts real images into the frozen EMA generator's latent."""

    name = "fit-teacher (encoder)"
    config_prefix = "fit.gan"
    model_key = "encoder"

    def __init__(self, encoder: Encoder, generator: Generator, discriminator: Discriminator, images: Dataset,
                 cfg: DictConfig, seed: int, device: torch.device, num_workers: int = 0) -> None:
        self.model, self.generator, self.discriminator = encoder, generator, discriminator
        self.images, self.cfg, self.seed, self.device = images, cfg, int(seed), device
        self.num_workers, self.batch = int(num_workers), int(cfg.batch_size)
        self.images_per_step = self.batch
        self.steps = int(cfg.gan.encoder_steps)

    def batches(self, start_step: int) -> Iterator[Any]:
        return _image_batches(self.images, self.batch, seeds.step(self.seed, 0, 1_000), start_step, self.steps,
                              self.num_workers)

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        _, _, real = batch
        g = torch.Generator().manual_seed(seeds.step(self.seed, step, 1_000 + dist.rank()))
        real = _flip(real, g, bool(self.cfg.hflip)).to(self.device)
        z = torch.randn((real.shape[0], self.generator.z_dim), generator=g).to(self.device)
        with torch.no_grad():
            sampled = self.generator(z)
            _, real_maps = self.discriminator(real, features=True)
        z_hat, z_cycle = model(torch.cat([real, sampled])).split(real.shape[0])
        recon = self.generator(z_hat)
        pixel = (recon.float() - real).abs().mean()
        _, recon_maps = self.discriminator(recon, features=True)
        perceptual = sum((a.float() - b.float()).abs().mean() for a, b in zip(recon_maps, real_maps)) / len(real_maps)
        cycle = F.mse_loss(z_cycle.float(), z)
        gc = self.cfg.gan
        loss = pixel + float(gc.perceptual_weight) * perceptual + float(gc.cycle_weight) * cycle
        return {"loss": loss, "pixel_l1": pixel.detach(), "perceptual": perceptual.detach(), "cycle": cycle.detach()}


def gan_loop(cfg: DictConfig, optim: Any, steps: int, seed: int, amp: str) -> LoopConfig:
    """The engine settings of a GAN stage (``fit``'s checkpoints, budget and logging)."""
    return LoopConfig.of(section(optim, Optim), steps=int(steps), amp=amp, seed=seed, log_every=int(cfg.log_every),
                         checkpoint_every=int(cfg.checkpoint_every), keep_last=int(cfg.keep_last),
                         keep_every=int(cfg.get("keep_every") or 0), max_minutes=cfg.get("max_minutes"),
                         loss_smoothing=0.98, allow_new_total=True)


def build_gan(cfg: DictConfig, size: Sequence[int]) -> tuple[Generator, Discriminator]:
    gc = cfg.gan
    size = check_gan_size(size)
    return (Generator(size, int(gc.z_dim), int(gc.width), int(gc.max_channels)),
            Discriminator(size, int(gc.d_width), int(gc.max_channels)))


def reconstruction_error(encoder: Encoder, generator: Generator, images: torch.Tensor) -> float:
    """Mean absolute pixel error of ``G(E(x))`` against ``x`` (images in [-1, 1], so 2 is the worst)."""
    with torch.no_grad():
        return float((generator(encoder(images)) - images).abs().mean())


ENCODER_OF = "generator_step.json"  # RUN/encoder/: the generator step its encoder inverts


def _restart_encoder_if_stale(folder: Path, generator_step: int) -> None:
    """Stage 2's folder for the generator of ``generator_step``: its checkpoints are dropped when they
    invert another generator (a finished run extended with ``--resume fit.steps=N``), so the encoder
    is trained anew; the step is recorded before stage 2 trains."""
    if dist.is_main():
        marker = folder / ENCODER_OF
        done_for = int(read_json(marker, ModelError).get("generator_step", -1)) if marker.is_file() else None
        if done_for is not None and done_for != generator_step:
            log.info("fit-teacher: the encoder inverted the generator of step %d; training it anew for step %d",
                     done_for, generator_step)
            shutil.rmtree(folder)
        write_json(marker, {"generator_step": int(generator_step)})
    dist.barrier()


def fit_gan(images: Dataset, out: Path, cfg: DictConfig, size: Sequence[int], device: torch.device, seed: int,
            amp: str = "auto", num_workers: int = 0, progress: bool = True) -> FitResult:
    """Train the GAN teacher on ``images`` (``(3, H, W)`` tensors in [-1, 1]); write ``out/teacher``.

    ``cfg`` is the ``fit`` section (``fit.gan`` for the GAN's own keys). Stage 1 checkpoints in
    ``out/checkpoints``, stage 2 in ``out/encoder/checkpoints``; ``--resume`` continues either. A
    generator stopped by ``fit.max_minutes`` under ``schedule=steps`` is exported without its encoder
    (a samples-only teacher) and ``--resume`` continues it; under ``schedule=budget`` the budget is the
    generator's planned end (its cosine has annealed), so the encoder follows. The encoder stage has
    no budget of its own (its steps are few). Returns a :class:`~dtlabel.teachers.fit.FitResult` with ``encoder`` the second stage's
    result (or None).
    """
    world, gc = dist.world_size(), cfg.gan
    if cfg.get("init_from"):
        raise ConfigError(f"fit.init_from={cfg.init_from} continues a DDPM teacher; a GAN teacher continues its own run "
                          "with --resume (fit.steps=N for more steps)")
    if int(cfg.batch_size) % world:
        raise ConfigError(f"fit.batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    if int(cfg.batch_size) // world < 2:
        raise ConfigError(f"fit.batch_size {cfg.batch_size} over {world} process(es) leaves one image per process; the "
                          "GAN generator's batch norm needs at least 2")
    torch.manual_seed(seed)
    generator, discriminator = build_gan(cfg, size)
    pair = GanPair(generator, discriminator, parse_policy(gc.diffaug), float(gc.r1_gamma)).to(device)
    task = GanTask(pair, images, cfg, seed, device, num_workers)
    log.info("fit-teacher: GAN generator %.2fM, discriminator %.2fM parameters at %s, %d steps x batch %d on %s",
             sum(p.numel() for p in generator.parameters()) / 1e6, sum(p.numel() for p in discriminator.parameters()) / 1e6,
             "x".join(map(str, size)), int(cfg.steps), int(cfg.batch_size), device)
    amp = fit_amp(amp, cfg, device)
    result = train(task, gan_loop(cfg, gc.optim, int(cfg.steps), seed, amp), out, device, progress=progress)
    ema = task.ema_generator()
    encoder, stage2 = None, None
    finished = not result.stopped or result.schedule == "budget"  # a budget run ends where it planned to
    if int(gc.encoder_steps) > 0 and finished:
        _restart_encoder_if_stale(out / "encoder", int(result.steps))
        torch.manual_seed(seeds.step(seed, 0, 2_000))
        encoder = Encoder(size, int(gc.z_dim), int(gc.d_width), int(gc.max_channels)).to(device)
        discriminator.eval().requires_grad_(False)
        enc_task = EncoderTask(encoder, ema, discriminator, images, cfg, seed, device, num_workers)
        loop = gan_loop(cfg, gc.encoder_optim, int(gc.encoder_steps), seed, amp)
        loop.max_minutes = None
        stage2 = train(enc_task, loop, out / "encoder", device, progress=progress)
        encoder.eval()
    teacher_dir = out / "teacher"
    if dist.is_main():
        meta = {"trained_steps": int(result.steps), "encoder_steps": stage2.steps if stage2 else 0,
                "size": [int(s) for s in size], "seed": int(seed)}
        dtype = torch.float16 if str(cfg.get("export_dtype", "fp32")) == "fp16" else torch.float32
        save_gan(teacher_dir, ema, encoder, meta, dtype)
    dist.barrier()
    return FitResult(teacher_dir, result.steps, result.loss_ema, result.images_per_second, result.stopped, None, amp,
                     result.schedule, encoder=stage2)
