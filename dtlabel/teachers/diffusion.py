"""Diffusion teachers: a frozen UNet read as a multi-scale feature extractor (DreamTeacher, docs/METHOD.md §2).

Take a real image ``x0``, draw noise ``eps``, form ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` at a
timestep ``t``, run the UNet once and keep the outputs of some decoder blocks. :class:`DiffusionTeacher`
implements that once for every diffusion family; a family (``ddpm.py``, ``stable_diffusion.py``)
only says how to load its folder, how to move between pixels and the UNet's space (identity or a
VAE) and how to call its UNet. The denoising loop is ``sampling.py``'s (on a predict function and a
scheduler; :meth:`DiffusionTeacher.sample` batches it and reads features), the hooks in ``hooks.py``, the
noise draws in ``noise.py`` (determinism: there), the sampling steps' fast paths in ``speed.py``.

Feature maps are named ``"{block}@t={t}"`` (``"up_blocks.1@t=50"``), or ``"{block}@t={t1}+{t2}"``
when several timesteps of one block are concatenated along channels.
"""

from __future__ import annotations

import contextlib
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dtlabel.device import amp_dtype
from dtlabel.errors import ConfigError, did_you_mean
from dtlabel.features import FeatureSpec, feature_key
from dtlabel.seeds import synth_sample
from dtlabel.teachers import sampling
from dtlabel.teachers.base import SampleOutput, Teacher
from dtlabel.teachers.hooks import capture_outputs, check_blocks, output_info, run_hooked
from dtlabel.teachers.loading import make_scheduler
from dtlabel.teachers.noise import NOISE_DEVICES, check_timesteps, draw_noise, image_seeds
from dtlabel.teachers.speed import SamplingNet

__all__ = ["DiffusionTeacher"]

_AMP_CHOICES = ("auto", "fp16", "bf16", "none", "off", "fp32")
_SAMPLE_FEATURE_MODES = ("encode", "capture")


class DiffusionTeacher(Teacher):
    """A frozen diffusion UNet read as a multi-scale feature extractor, and a sampler.

    Subclasses load a folder (set ``unet`` and ``scheduler_config``, then call ``_finish_init``) and
    implement the pixel <-> model-space maps and the UNet call; this class does the noising, the
    hooks, the early stop and the timestep batching, and :meth:`sample` runs ``sampling.py``'s loop.

    Common options (keyword arguments of every diffusion family, recorded in :attr:`kwargs`):

    - ``blocks``: names of UNet submodules whose outputs are features (``"up_blocks.1"``,
      ``"mid_block"``; any name in ``unet.named_modules()``). Default: every ``up_blocks.*``.
    - ``timesteps``: default timesteps of :meth:`features` (default ``(50,)``).
    - ``concat_timesteps``: concatenate the timesteps of one block along channels (default True).
    - ``noise_draws``: default number of noise draws averaged by :meth:`features` (default 1).
    - ``batch_timesteps``: run all timesteps and noise draws of one call as one UNet batch (fast,
      more memory); False loops over them (default True).
    - ``early_stop``: stop the UNet forward once the last requested block has run (default True).
    - ``amp``: ``"auto"`` (bf16 if the GPU supports it, else fp16), ``"fp16"``, ``"bf16"`` or
      ``"none"``/``"off"``/``"fp32"``; only used on CUDA (as ``dtlabel.device.amp_dtype``), the CPU
      always runs float32.
    - ``sampler``: ``"ddim"`` (default), ``"ddpm"`` or ``"dpm"`` (DPM-Solver++ multistep).
    - ``sample_steps``: denoising steps of :meth:`sample` (default 50); ``eta``: DDIM eta (0.0).
    - ``sample_features``: ``"encode"`` (default) or ``"capture"``, see :meth:`sample`.
    - ``noise_device``: ``"cpu"`` (default) or ``"device"``: where noise generators live (``noise.py``);
      ``channels_last``, ``compile``: how sampling steps run the UNet (``speed.py``).
    """

    can_sample = True
    guidance_scale: float = 1.0  # classifier-free guidance of text-conditioned families
    unet: torch.nn.Module
    scheduler_config: dict[str, Any]

    def __init__(
        self,
        path: str | Path,
        *,
        blocks: Sequence[str] | None = None,
        timesteps: Sequence[int] = (50,),
        concat_timesteps: bool = True,
        noise_draws: int = 1,
        batch_timesteps: bool = True,
        early_stop: bool = True,
        amp: str = "auto",
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        sample_features: str = "encode",
        noise_device: str = "cpu",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(path)
        if amp not in _AMP_CHOICES:
            raise ConfigError(
                f"unknown amp {amp!r}; choose one of {list(_AMP_CHOICES)}{did_you_mean(amp, _AMP_CHOICES)}"
            )
        if sampler not in self.samplers():
            raise ConfigError(
                f"unknown sampler {sampler!r}; choose one of {sorted(self.samplers())}"
                f"{did_you_mean(sampler, self.samplers())}"
            )
        if sample_features not in _SAMPLE_FEATURE_MODES:
            raise ConfigError(f"unknown sample_features {sample_features!r}; choose 'encode' or 'capture'")
        if int(noise_draws) < 1:
            raise ConfigError(f"noise_draws must be >= 1, got {noise_draws}")
        if noise_device not in NOISE_DEVICES:
            raise ConfigError(f"unknown noise_device {noise_device!r}; choose one of {list(NOISE_DEVICES)}")
        if int(sample_steps) < 1:
            raise ConfigError(f"sample_steps must be >= 1, got {sample_steps}")
        self.concat_timesteps = bool(concat_timesteps)
        self.noise_draws = int(noise_draws)
        self.batch_timesteps = bool(batch_timesteps)
        self.early_stop = bool(early_stop)
        self.amp = amp
        self.sampler = sampler
        self.sample_steps = int(sample_steps)
        self.eta = float(eta)
        self.sample_features = sample_features
        self.noise_device, self._speed = noise_device, {"channels_last": bool(channels_last), "compile": bool(compile)}
        self._fast_steps = False  # set while a sampler runs its hook-free steps (``_run_unet``)
        self._requested_blocks = tuple(blocks) if blocks is not None else None
        ts_in = (timesteps,) if isinstance(timesteps, int) else timesteps
        self._requested_timesteps = tuple(int(t) for t in ts_in)
        self._block_info: dict[str, tuple[int, int]] | None = None  # block -> (channels, stride)
        self.record(  # normalised values
            blocks=list(blocks) if blocks is not None else None,
            timesteps=list(self._requested_timesteps),
            concat_timesteps=self.concat_timesteps,
            noise_draws=self.noise_draws,
            batch_timesteps=self.batch_timesteps,
            early_stop=self.early_stop,
            amp=amp,
            sampler=sampler,
            sample_steps=self.sample_steps,
            eta=self.eta,
            sample_features=sample_features,
            noise_device=noise_device,
            channels_last=bool(channels_last),
            compile=bool(compile),
        )

    def _finish_init(self) -> None:
        """Validate blocks and timesteps once the subclass has set ``unet`` and ``scheduler_config``."""
        from diffusers import DDPMScheduler

        self.requires_grad_(False)
        self.eval()
        names = [n for n, _ in self.unet.named_modules()]
        default = tuple(n for n in names if n.count(".") == 1 and n.startswith("up_blocks."))
        top = [n for n in names if n == "mid_block" or re.fullmatch(r"(down|up)_blocks\.\d+", n)]
        self.blocks: tuple[str, ...] = check_blocks(self.unet, self._requested_blocks or default, top, "UNet")
        self.timesteps: tuple[int, ...] = self._check_timesteps(self._requested_timesteps)
        self.noise_scheduler = make_scheduler(DDPMScheduler, self.scheduler_config)
        self.sampling_net = SamplingNet(self.unet, **self._speed)

    # ------------------------------------------------------------------ family hooks
    @property
    @abstractmethod
    def latent_factor(self) -> int:
        """Pixels per UNet-space position (1 for pixel-space models, 8 for SD's VAE)."""

    @property
    @abstractmethod
    def model_channels(self) -> int:
        """Channels of the UNet's input (3 for a pixel DDPM, 4 for SD latents)."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``images (B, 3, H, W) in [-1, 1]`` to the UNet's clean input ``x0 (B, C, h, w)``."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Map the UNet's clean space ``(B, C, h, w)`` to images ``(B, 3, H, W)`` in [-1, 1]."""

    @abstractmethod
    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Run the UNet on ``x (N, C, h, w)`` at timesteps ``t (N,)`` and return its prediction."""

    def _run_unet(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The UNet's first output at ``x``: eager, or in a sampler's hook-free steps the
        channels-last / compiled form of ``teacher.channels_last`` / ``teacher.compile`` (``speed.py``)."""
        if self._fast_steps:
            return self.sampling_net.module(self.sampling_net.prepare(x), t, return_dict=False, **kwargs)[0]
        return self.unet(x, t, return_dict=False, **kwargs)[0]

    def _condition(self, n: int, guidance: bool = False) -> Any:
        """Conditioning for a batch of ``n`` (None for unconditional models)."""
        return None

    def _predict(self, x: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Float32 model prediction at ``x (N, C, h, w)`` and scalar ``t`` (text families add guidance)."""
        with self._amp_context():
            return self._unet(x, t.expand(x.shape[0]), self._condition(x.shape[0])).float()

    def samplers(self) -> dict[str, str]:
        """Sampler names accepted by ``sampler=`` -> diffusers scheduler class names."""
        return {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler"}

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def unet_factor(self) -> int:
        """Size multiple the UNet needs in its own space: 2 ** (number of down blocks - 1)."""
        return 2 ** (len(getattr(self.unet, "down_blocks", [None])) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (UNet factor times the latent factor)."""
        return self.unet_factor * self.latent_factor

    @property
    def feature_spec(self) -> FeatureSpec:
        """Spec of :meth:`features` with the configured timesteps."""
        return self.spec_for(self.timesteps)

    def spec_for(self, timesteps: Sequence[int] | None = None, noise_draws: int | None = None) -> FeatureSpec:
        """Spec of :meth:`features` called with ``timesteps`` (default: the configured ones).

        ``noise_draws`` is accepted (the spec does not depend on it) so that ``spec_for(**options)``
        takes the same options as :meth:`features`.
        """
        ts = self._check_timesteps(timesteps if timesteps is not None else self.timesteps)
        info = self._get_block_info()
        names: list[str] = []
        channels: list[int] = []
        strides: list[int] = []
        for b in self.blocks:
            c, s = info[b]
            groups = [ts] if self.concat_timesteps else [(t,) for t in ts]
            for g in groups:
                names.append(feature_key(b, g))
                channels.append(c * len(g))
                strides.append(s)
        return FeatureSpec(tuple(names), tuple(channels), tuple(strides))

    # ------------------------------------------------------------------ helpers
    def _check_timesteps(self, timesteps: int | Sequence[int]) -> tuple[int, ...]:
        return check_timesteps(timesteps, int(self.scheduler_config.get("num_train_timesteps", 1000)))

    def _amp_context(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on CUDA with the configured dtype; nothing on the CPU (float32)."""
        dtype = amp_dtype(self.device, self.amp)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _run_hooked(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any, stop: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One UNet call with feature hooks: ``(block outputs, prediction or None if stopped)``."""
        return run_hooked(self.unet, self.blocks, lambda: self._unet(x, t, cond), stop, self._amp_context(), "UNet")

    def _get_block_info(self) -> dict[str, tuple[int, int]]:
        """Channels and image-relative stride of each block, from one tiny dry run (cached)."""
        if self._block_info is None:
            size = 2 * self.unet_factor
            x = torch.zeros(1, self.model_channels, size, size, device=self.device)
            t = torch.zeros(1, dtype=torch.long, device=self.device)
            with torch.no_grad():
                store, _ = self._run_hooked(x, t, self._condition(1), stop=True)
            self._block_info = output_info({b: store[b] for b in self.blocks}, size, self.latent_factor)
        return self._block_info

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(
        self,
        images: torch.Tensor,
        seed: int | Sequence[int] = 0,
        *,
        timesteps: Sequence[int] | None = None,
        noise_draws: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Multi-scale teacher features of real images (one noisy UNet pass per timestep).

        Args:
            images: ``(B, 3, H, W)`` float in [-1, 1]; ``H, W`` as allowed by :meth:`check_image_size`.
            seed: an int (one generator for the batch) or one seed per image (each image's noise
                from its own generator: features independent of batch composition; use this for
                caches and synthesis).
            timesteps: diffusion timesteps (default: the configured ones). All timesteps share the
                same noise draw, so a block's map at ``t=50`` does not depend on which other
                timesteps are requested.
            noise_draws: number of noise draws to average (default: the configured ``noise_draws``).

        Returns:
            ``{name: (B, C, H / stride, W / stride) float32}`` on the teacher's device, named and
            ordered as ``spec_for(timesteps)``, at native resolution (heads upsample).
        """
        ts = self._check_timesteps(timesteps if timesteps is not None else self.timesteps)
        draws = int(noise_draws if noise_draws is not None else self.noise_draws)
        if draws < 1:
            raise ConfigError(f"noise_draws must be >= 1, got {draws}")
        images = self._check_images(images)
        n = images.shape[0]
        seeds = image_seeds(seed, n)
        x0 = self.encode(images)
        eps = draw_noise(tuple(x0.shape), seeds, draws, self.device, on_device=self.noise_device == "device")
        passes = [(d, t) for d in range(draws) for t in ts]
        chunks = [passes] if self.batch_timesteps else [[p] for p in passes]
        acc: dict[tuple[str, int], torch.Tensor] = {}
        for chunk in chunks:
            t_all = torch.tensor([t for _, t in chunk for _ in range(n)], dtype=torch.long, device=self.device)
            eps_all = torch.cat([eps[d] for d, _ in chunk])
            x_t = self.noise_scheduler.add_noise(x0.repeat(len(chunk), 1, 1, 1), eps_all, t_all)
            store, _ = self._run_hooked(x_t, t_all, self._condition(x_t.shape[0]), stop=self.early_stop)
            for block, out in store.items():
                for k, (_, t) in enumerate(chunk):
                    part = out[k * n : (k + 1) * n].float()
                    acc[(block, t)] = part if (block, t) not in acc else acc[(block, t)] + part
        if draws > 1:
            acc = {k: v / draws for k, v in acc.items()}
        return self._assemble(acc, ts)

    def _assemble(self, acc: Mapping[tuple[str, int], torch.Tensor], ts: Sequence[int]) -> dict[str, torch.Tensor]:
        """Named maps from ``{(block, t): map}``: one per block (timesteps concatenated) or per (block, t)."""
        feats: dict[str, torch.Tensor] = {}
        for b in self.blocks:
            if self.concat_timesteps:
                maps = [acc[(b, t)] for t in ts]
                feats[feature_key(b, ts)] = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
            else:
                for t in ts:
                    feats[feature_key(b, (t,))] = acc[(b, t)]
        return feats

    # ------------------------------------------------------------------ sampling
    def make_sampler(self, name: str | None = None) -> Any:
        """A fresh diffusers scheduler of kind ``name`` (default: the configured ``sampler``)."""
        return sampling.make_sampler(self.samplers(), name or self.sampler, self.scheduler_config)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int | None = None,
        return_features: bool = True,
        height: int | None = None,
        width: int | None = None,
        output_device: str | torch.device | None = "cpu",
    ) -> SampleOutput:
        """Draw ``n`` images with the configured sampler, and optionally their features.

        Sample ``i`` uses its own generator (noise.py) seeded ``seed + i``, so it is the same whatever ``n``
        and ``batch_size`` are. Features follow the ``sample_features`` option (``"encode"``: the
        real-image reading of the final image; ``"capture"``: the sampler's own block outputs), see
        ``sampling.py``. ``steps``: default ``sample_steps``; ``batch_size``: images per UNet batch
        (default all ``n``); ``height``, ``width``: default :attr:`image_size`; ``output_device``:
        where results go (None: the teacher's device).

        Returns:
            :class:`SampleOutput` with ``images (n, 3, H, W)`` in [-1, 1] and features as
            :attr:`feature_spec` (or None if ``return_features`` is False).
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        steps, bs = int(steps or self.sample_steps), int(batch_size or n)
        h, w = height or self.image_size[0], width or self.image_size[1]
        self.check_image_size(h, w)
        shape = (self.model_channels, h // self.latent_factor, w // self.latent_factor)
        out_dev = torch.device(output_device) if output_device is not None else self.device
        images: list[torch.Tensor] = []
        feats: dict[str, list[torch.Tensor]] = {}
        for start in range(0, n, bs):
            batch_seeds = [synth_sample(seed, i) for i in range(start, min(n, start + bs))]
            img, f = self._sample_batch(batch_seeds, shape, steps, return_features)
            images.append(img.to(out_dev))
            for k, v in (f or {}).items():
                feats.setdefault(k, []).append(v.to(out_dev))
        features = {k: torch.cat(v) for k, v in feats.items()} if return_features else None
        return SampleOutput(torch.cat(images), features, [synth_sample(seed, i) for i in range(n)])

    def _sample_batch(self, batch_seeds: list[int], shape: tuple[int, int, int], steps: int,
                      return_features: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """One batch: ``(images (B, 3, H, W) in [-1, 1], features or None)``."""
        capture = return_features and self.sample_features == "capture"
        self._fast_steps = not capture  # captured steps run hooked, so eager
        try:
            x, captured = sampling.denoise(
                lambda x_in, t: self._predict(x_in, t, self.guidance_scale), self.make_sampler(), batch_seeds, shape,
                steps, self.device, eta=self.eta,
                capture=(lambda store: capture_outputs(self.unet, self.blocks, store)) if capture else None,
                capture_at=self.timesteps, noise_on_device=self.noise_device == "device")
        finally:
            self._fast_steps = False
        images = self.decode(x).clamp(-1, 1).float()
        if not return_features:
            return images, None
        if capture:
            return images, self._assemble(captured, self.timesteps)
        return images, self.features(images, seed=batch_seeds)

    def extra_repr(self) -> str:
        blocks, ts = list(self.blocks), list(self.timesteps)
        return f"family={self.family!r}, root={str(self.root)!r}, blocks={blocks}, timesteps={ts}"
