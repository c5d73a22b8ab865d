"""Noise and timesteps of diffusion teachers: checked timesteps, per-image seeds, noise draws.

By default noise is drawn on the CPU from ``torch.Generator`` objects seeded by the caller and then
moved, so the same seed gives the same features on CPU and CUDA (up to kernel rounding). With
``teacher.noise_device=device`` it is drawn by generators on the teacher's device instead (no host
work and no copy per batch on a GPU): the bytes are then still a function of the seed on one kind
of device, but CUDA's generator (Philox) draws other numbers than the CPU's (Mersenne Twister), so
a seed gives other samples on a GPU than on a CPU. One seed per image makes an image's noise
independent of the batch it is in, either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dtlabel.errors import ConfigError

__all__ = ["NOISE_DEVICES", "check_timesteps", "draw_noise", "generator", "image_seeds"]

NOISE_DEVICES = ("cpu", "device")


def check_timesteps(timesteps: int | Sequence[int], num_train_timesteps: int) -> tuple[int, ...]:
    """``timesteps`` as a tuple of distinct ints in ``[0, num_train_timesteps)``, else ``ConfigError``."""
    if isinstance(timesteps, int):
        timesteps = (timesteps,)
    ts = tuple(int(t) for t in timesteps)
    n = int(num_train_timesteps)
    if not ts:
        raise ConfigError("timesteps is empty; pass at least one, e.g. timesteps=[50]")
    bad = [t for t in ts if not 0 <= t < n]
    if bad:
        raise ConfigError(f"timesteps {bad} out of range; the teacher has timesteps 0..{n - 1}")
    if len(set(ts)) != len(ts):
        raise ConfigError(f"duplicate timesteps: {list(ts)}")
    return ts


def image_seeds(seed: int | Sequence[int], batch: int) -> list[int] | int:
    """An int seed as is, or one seed per image (``ValueError`` unless there are ``batch`` of them)."""
    if isinstance(seed, int):
        return seed
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}; pass one int or one seed per image")
    return seeds


def generator(seed: int, device: torch.device, on_device: bool = False) -> torch.Generator:
    """A generator seeded ``seed``: on the CPU, or on ``device`` when ``on_device``."""
    return torch.Generator(device if on_device else "cpu").manual_seed(int(seed))


def draw_noise(shape: tuple[int, ...], seed: int | list[int], draws: int, device: torch.device,
               on_device: bool = False) -> torch.Tensor:
    """``(draws, B, C, h, w)`` standard normal noise for a batch of ``shape (B, C, h, w)``, on ``device``.

    An int seed draws the whole batch from one generator; a list draws image ``b`` from its own
    generator seeded ``seed[b]``, so its features do not depend on the rest of the batch. The
    generators are on the CPU, or on ``device`` when ``on_device`` (``teacher.noise_device``).
    """
    b, *rest = shape
    where = device if on_device else torch.device("cpu")
    if isinstance(seed, int):
        eps = torch.randn((draws, b, *rest), generator=generator(seed, device, on_device), device=where)
    else:
        eps = torch.stack([torch.randn((draws, *rest), generator=generator(s, device, on_device), device=where)
                           for s in seed], dim=1)
    return eps.to(device)
