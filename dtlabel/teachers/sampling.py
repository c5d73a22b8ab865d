"""The denoising loop of diffusion teachers, written out (diffusers' ``pipeline_ddpm.py`` shape) on a
predict function and a scheduler: it knows no teacher (the teacher calls it with its UNet call,
guidance included, and decodes the result).

``set_timesteps``, then per step: scale the input, one ``predict(x, t)``, ``scheduler.step``. The
scheduler is a fresh diffusers object per batch, made from the teacher's own noise schedule
(:func:`make_sampler`).

Determinism: sample ``i`` has its own ``torch.Generator`` (the CPU's, or the device's with
``teacher.noise_device=device``) seeded ``seed + i`` for its initial noise and every step noise, so it is the same whatever ``n`` and the batch size are, and any range
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

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from dtlabel.errors import ConfigError
from dtlabel.teachers.loading import make_scheduler, parameter_names
from dtlabel.teachers.noise import generator

logger = logging.getLogger(__name__)

__all__ = ["capture_steps", "denoise", "make_sampler"]

# the model's prediction at input x (B, C, h, w) and a scalar timestep t, in float32
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# a context that, while open, stores the hooked block outputs of the model's calls in the dict it gets
Capture = Callable[[dict[str, torch.Tensor]], contextlib.AbstractContextManager]


def make_sampler(samplers: Mapping[str, str], name: str, config: Mapping[str, Any]) -> Any:
    """A fresh diffusers scheduler of kind ``name`` (``samplers``: name -> diffusers class name) on the
    noise schedule ``config``."""
    import diffusers

    if name not in samplers:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(samplers)}")
    cls = getattr(diffusers, samplers[name])
    # the teacher's own rule for x0 predictions: a pixel-space DDPM clips them to [-1, 1], a latent-space
    # model must not (its schedule says clip_sample false)
    clip, accepted = bool(config.get("clip_sample", False)), parameter_names(cls.__init__)
    overrides: dict[str, Any] = {"clip_sample": clip}
    if clip and "clip_sample" not in accepted:
        # DPM-Solver++ has no clip_sample; its thresholding with sample_max_value 1 is the same clamp of x0 to
        # [-1, 1] at every step. Without it the solver's x0 ran free and its samples drifted from the data
        # (default data, 20 steps: 4 points of student test mIoU lost, docs/RESULTS.md)
        if float(config.get("clip_sample_range", 1.0)) == 1.0 and "thresholding" in accepted:
            overrides.update(thresholding=True, sample_max_value=1.0)
        else:
            logger.warning("sampler %s cannot clip x0 as the teacher's schedule asks (clip_sample_range %s)",
                           name, config.get("clip_sample_range"))
    return make_scheduler(cls, config, **overrides)


def denoise(predict: Predict, scheduler: Any, seeds: Sequence[int], shape: tuple[int, int, int], steps: int,
            device: torch.device, eta: float = 0.0, capture: Capture | None = None,
            capture_at: Sequence[int] = (), noise_on_device: bool = False,
            ) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """One batch, one sample per seed: ``(x0 (B, C, h, w) in the model's space, captured maps)``.

    ``shape`` is one sample's ``(C, h, w)``. Sample ``k`` draws its initial and step noise from its
    own generator seeded ``seeds[k]`` (on the CPU, or on ``device`` with ``noise_on_device``; see
    ``noise.py``). With ``capture``, the block outputs of the step nearest
    to each timestep of ``capture_at`` are kept as ``{(block, t): (B, C', h', w')}``.
    """
    gens = [generator(s, device, noise_on_device) for s in seeds]
    scheduler.set_timesteps(steps, device=device)
    x = torch.cat([torch.randn((1, *shape), generator=g, device=g.device) for g in gens]).to(device)
    x = x * scheduler.init_noise_sigma
    step_kwargs: dict[str, Any] = {}
    step_params = parameter_names(scheduler.step)
    if "generator" in step_params:
        step_kwargs["generator"] = gens
    if "eta" in step_params:
        step_kwargs["eta"] = eta
    at = capture_steps(scheduler.timesteps, tuple(capture_at)) if capture is not None else {}
    captured: dict[tuple[str, int], torch.Tensor] = {}
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        if i in at:
            store: dict[str, torch.Tensor] = {}
            with capture(store):  # type: ignore[misc]
                pred = predict(x_in, t)
            for b, out in store.items():
                out = out[-x.shape[0] :].float()  # with guidance the conditional half comes last
                for ct in at[i]:
                    captured[(b, ct)] = out
        else:
            pred = predict(x_in, t)
        x = scheduler.step(pred.float(), t, x, **step_kwargs).prev_sample
    return x, captured


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
