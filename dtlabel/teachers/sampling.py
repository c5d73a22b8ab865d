"""The denoising loop of diffusion teachers, written out (diffusers' ``pipeline_ddpm.py`` shape).

``set_timesteps``, then per step: scale the input, one UNet call (with classifier-free guidance where
the family has it), ``scheduler.step``; finally decode to pixels. The scheduler is a fresh diffusers
object per batch, made from the teacher's own noise schedule.

Determinism: sample ``i`` has its own CPU ``torch.Generator`` seeded ``seed + i`` for its initial
noise and every step noise, so it is the same whatever ``n`` and the batch size are, and any range
of samples can be regenerated alone (for a large data set call ``sample`` repeatedly with
``seed=base_seed + offset``).

Feature modes (the teacher's ``sample_features`` option):

- ``"encode"`` (default, recommended): run ``teacher.features`` on the final images with seed
  ``seed + i`` per sample. These are exactly the features a real image gets, so a head trained on
  real-image features transfers to samples without a domain gap.
- ``"capture"``: keep the hooked block outputs of the sampling step whose timestep is nearest to
  each configured timestep (no extra UNet pass, but the maps come from the sampler's own trajectory
  and a coarser, scheduler-dependent timestep; use it only with a head trained on captured features).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from dtlabel import seeds as seeds_
from dtlabel.errors import ConfigError
from dtlabel.teachers.base import SampleOutput
from dtlabel.teachers.hooks import capture_outputs
from dtlabel.teachers.loading import make_scheduler, parameter_names

if TYPE_CHECKING:
    from dtlabel.teachers.diffusion import DiffusionTeacher

logger = logging.getLogger(__name__)

__all__ = ["capture_steps", "denoise", "make_sampler", "sample"]


def make_sampler(teacher: DiffusionTeacher, name: str | None = None) -> Any:
    """A fresh diffusers scheduler of kind ``name`` (default: the teacher's ``sampler``)."""
    import diffusers

    name = name or teacher.sampler
    samplers = teacher.samplers()
    if name not in samplers:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(samplers)}")
    cls = getattr(diffusers, samplers[name])
    config = teacher.scheduler_config
    # latent-space models must not clip x0 predictions to [-1, 1]
    return make_scheduler(cls, config, clip_sample=config.get("clip_sample", False))


def sample(
    teacher: DiffusionTeacher,
    n: int,
    seed: int,
    steps: int | None,
    batch_size: int | None,
    return_features: bool,
    height: int | None,
    width: int | None,
    output_device: str | torch.device | None,
) -> SampleOutput:
    """``n`` samples in batches of ``batch_size``; see :meth:`DiffusionTeacher.sample`."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    steps = int(steps or teacher.sample_steps)
    bs = int(batch_size or n)
    h, w = height or teacher.image_size[0], width or teacher.image_size[1]
    teacher.check_image_size(h, w)
    shape = (teacher.model_channels, h // teacher.latent_factor, w // teacher.latent_factor)
    out_dev = torch.device(output_device) if output_device is not None else teacher.device
    images: list[torch.Tensor] = []
    feats: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, bs):
        idx = list(range(start, min(n, start + bs)))
        img, f = denoise(teacher, [seeds_.synth_sample(seed, i) for i in idx], shape, steps, return_features)
        images.append(img.to(out_dev))
        for k, v in (f or {}).items():
            feats.setdefault(k, []).append(v.to(out_dev))
    features = {k: torch.cat(v) for k, v in feats.items()} if return_features else None
    return SampleOutput(torch.cat(images), features, [seeds_.synth_sample(seed, i) for i in range(n)])


def denoise(
    teacher: DiffusionTeacher, seeds: list[int], shape: tuple[int, int, int], steps: int, return_features: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """One batch, one sample per seed: ``(images (B, 3, H, W) in [-1, 1], features or None)``.

    ``shape`` is one sample's ``(C, h, w)`` in the UNet's space.
    """
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    scheduler = teacher.make_sampler()
    scheduler.set_timesteps(steps, device=teacher.device)
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(teacher.device)
    x = x * scheduler.init_noise_sigma
    step_kwargs: dict[str, Any] = {}
    step_params = parameter_names(scheduler.step)
    if "generator" in step_params:
        step_kwargs["generator"] = gens
    if "eta" in step_params:
        step_kwargs["eta"] = teacher.eta
    capture = return_features and teacher.sample_features == "capture"
    capture_at = capture_steps(scheduler.timesteps, teacher.timesteps) if capture else {}
    captured: dict[tuple[str, int], torch.Tensor] = {}
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        if i in capture_at:
            store: dict[str, torch.Tensor] = {}
            with capture_outputs(teacher.unet, teacher.blocks, store):
                pred = teacher._predict(x_in, t, teacher.guidance_scale)
            for b, out in store.items():
                out = out[-x.shape[0] :].float()  # with guidance the conditional half comes last
                for ct in capture_at[i]:
                    captured[(b, ct)] = out
        else:
            pred = teacher._predict(x_in, t, teacher.guidance_scale)
        x = scheduler.step(pred.float(), t, x, **step_kwargs).prev_sample
    images = teacher.decode(x).clamp(-1, 1).float()
    if not return_features:
        return images, None
    if teacher.sample_features == "capture":
        return images, teacher._assemble(captured, teacher.timesteps)
    return images, teacher.features(images, seed=seeds)


def capture_steps(sched_ts: torch.Tensor, timesteps: tuple[int, ...]) -> dict[int, list[int]]:
    """Map sampling step index -> the configured ``timesteps`` it is nearest to."""
    out: dict[int, list[int]] = {}
    ts_cpu = sched_ts.detach().cpu().long()
    for t in timesteps:
        i = int((ts_cpu - t).abs().argmin())
        if int(ts_cpu[i]) != t:
            logger.info("capture: timestep %d taken at sampling step %d (t=%d)", t, i, int(ts_cpu[i]))
        out.setdefault(i, []).append(t)
    return out
