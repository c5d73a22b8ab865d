"""The ``gan`` teacher family: a generator's block outputs as features (DreamTeacher's GAN path).

A GAN cannot encode an image by itself, so the family has two readings (docs/METHOD.md, "GAN
teachers"): :meth:`GanTeacher.sample` draws latents (one CPU generator per sample, seeded
``seed + i``) and returns the images with the generator's maps at strides 32, 16, 8 and 4 of one
pass, the exact features of what was drawn; :meth:`GanTeacher.features` maps real images to a latent
with the folder's encoder (fit-teacher's second stage) and returns the generator's maps at that
latent, so every command that reads real images works with a GAN teacher unchanged. A folder
without an encoder samples only; reading real images through it is one ``ConfigError`` line.

The folder (``fit-teacher fit.family=gan`` writes it as ``RUN/teacher``): ``gan.json`` (format,
the generator's and encoder's constructor arguments), ``generator.safetensors`` (EMA weights),
``encoder.safetensors`` (optional), ``dtlabel_teacher.json``. It loads with the networks of
``gan_arch.py`` alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from dtlabel.errors import ConfigError, ModelError
from dtlabel.features import FeatureSpec
from dtlabel.seeds import synth_sample
from dtlabel.teachers.base import SampleOutput, Teacher, register_teacher
from dtlabel.io import atomic_dir, save_tensors, write_json
from dtlabel.teachers.gan_arch import FEATURE_STRIDES, GAN_DESCRIPTOR, GAN_FORMAT, Encoder, Generator
from dtlabel.teachers.loading import TEACHER_META, missing_files, read_model_json


def save_gan(folder: str | Path, generator: Generator, encoder: Encoder | None, meta: dict[str, Any],
             dtype: torch.dtype = torch.float32) -> Path:
    """Write a GAN teacher folder atomically: ``generator.safetensors``, ``encoder.safetensors`` (if
    any), ``dtlabel_teacher.json`` (``meta``), then ``gan.json`` (the constructor arguments).

    ``dtype`` (``fit.export_dtype``): float tensors stored as float16 halve the folder; the teacher
    loads them into its float32 networks (batch norm's step counters stay integers)."""
    folder = Path(folder)

    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu()
        return (v.to(dtype) if v.is_floating_point() else v).contiguous()

    with atomic_dir(folder) as tmp:
        for name, net in (("generator", generator), ("encoder", encoder)):
            if net is not None:
                save_tensors({k: stored(v) for k, v in net.state_dict().items()},
                             tmp / f"{name}.safetensors", metadata={"format": GAN_FORMAT})
        write_json(tmp / TEACHER_META, {"family": "gan", **meta})
        write_json(tmp / GAN_DESCRIPTOR, {"format": GAN_FORMAT, "generator": generator.kwargs,
                                          "encoder": None if encoder is None else encoder.kwargs})
    return folder


def _load(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise ModelError(f"cannot load {path} into the network {GAN_DESCRIPTOR} describes: {first}") from None
    return module.eval().requires_grad_(False)


def _digest(image: Any) -> bytes:
    """A key for an ``(H, W, 3) uint8`` image: the sha1 of its pixels."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


@register_teacher("gan")
class GanTeacher(Teacher):
    """A dtlabel GAN folder: features of samples (exact) and of real images (through the encoder)."""

    can_sample = True
    folder_hint = f"a dtlabel GAN folder ({GAN_DESCRIPTOR})"
    #: what synthesize records of a draw: one generator pass per sample (no denoising steps)
    sampler: ClassVar[str] = "generator"
    sample_steps: ClassVar[int] = 1

    def __init__(self, path: str | Path, amp: str = "auto") -> None:
        super().__init__(path)
        missing = missing_files(self.root, {"": [GAN_DESCRIPTOR, "generator.safetensors"]})
        if missing:
            raise ModelError(f"the GAN folder {self.root} is incomplete: missing {', '.join(missing)}")
        desc = read_model_json(self.root / GAN_DESCRIPTOR)
        if not isinstance(desc, dict) or desc.get("format") != GAN_FORMAT:
            raise ModelError(f"{self.root / GAN_DESCRIPTOR} is not a dtlabel GAN descriptor (format "
                             f"{desc.get('format') if isinstance(desc, dict) else None!r}, expected {GAN_FORMAT!r})")
        try:
            generator = Generator(**desc["generator"])
            encoder = Encoder(**desc["encoder"]) if desc.get("encoder") is not None else None
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelError(f"{self.root / GAN_DESCRIPTOR} does not describe the networks: "
                             f"{type(exc).__name__} {' '.join(str(exc).split())[:160]}") from None
        self.generator = _load(generator, self.root / "generator.safetensors")
        self.encoder: Encoder | None = None
        if encoder is not None:
            if not (self.root / "encoder.safetensors").is_file():
                raise ModelError(f"the GAN folder {self.root} is incomplete: {GAN_DESCRIPTOR} names an encoder "
                                 "but encoder.safetensors is missing")
            self.encoder = _load(encoder, self.root / "encoder.safetensors")
        self.amp = str(amp)
        self._stored: dict[bytes, torch.Tensor] = {}  # use_latents: image digest -> its latent

    def use_latents(self, images: Any, z: torch.Tensor) -> None:
        """Read the images ``images (K, H, W, 3) uint8`` (and their mirror images) at their own latents
        ``z (K, z_dim)`` from now on, not at the encoder's inversion: DatasetGAN's labelled samples."""
        self._stored = {_digest(im): z[i].float() for i, im in enumerate(images)}

    @classmethod
    def matches(cls, root: Path) -> bool:
        return (Path(root) / GAN_DESCRIPTOR).is_file()

    @property
    def reading_key(self) -> str | None:
        """None while real images go through the encoder; with stored latents (:meth:`use_latents`) a
        digest of them, so a feature cache keeps the two readings apart."""
        if not self._stored:
            return None
        h = hashlib.sha1()
        for digest in sorted(self._stored):
            h.update(digest + self._stored[digest].numpy().tobytes())
        return "stored-latents:" + h.hexdigest()[:16]

    @property
    def reads_images(self) -> bool:
        return self.encoder is not None

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim)

    @property
    def feature_spec(self) -> FeatureSpec:
        ch = self.generator.channels
        return FeatureSpec(tuple(f"g.s{s}" for s in FEATURE_STRIDES), tuple(ch[:len(FEATURE_STRIDES)]), FEATURE_STRIDES)

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.generator.kwargs["size"]
        return int(h), int(w)

    def check_image_size(self, height: int, width: int) -> None:
        if (height, width) != self.image_size:
            h, w = self.image_size
            raise ConfigError(f"images are {height}x{width} but the GAN teacher in {self.root} generates {h}x{w}; "
                              f"resize the images to {h}x{w}")

    # ------------------------------------------------------------------ reading
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, z_dim)`` of real images ``(B, 3, H, W)`` in [-1, 1] (the inversion)."""
        if self.encoder is None:
            raise ConfigError(f"the GAN teacher in {self.root} has no encoder, so it cannot read real images; train "
                              "one (fit-teacher fit.family=gan fit.gan.encoder_steps=N) or use its samples only")
        return self.encoder(self._check_images(images))

    @torch.no_grad()
    def features_at(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(images (B, 3, H, W) in [-1, 1], maps)`` of the generator at latents ``z (B, z_dim)``."""
        images, maps = self.generator(z.to(self.device, torch.float32), features=True)
        return images.float(), {k: v.float() for k, v in maps.items()}

    def features(self, images: torch.Tensor, seed: int | Sequence[int] = 0, **options: Any) -> dict[str, torch.Tensor]:
        """The generator's maps at each image's latent: its stored one (:meth:`use_latents`; a mirror
        image gets the mirrored maps), else the encoder's inversion. Deterministic: ``seed`` unused."""
        if options:
            self.spec_for(**options)
        if not self._stored:
            return self.features_at(self.encode(images))[1]
        images = self._check_images(images)
        z, flip, found = self._stored_latents(images)
        if not all(found):
            if self.encoder is None:
                raise ConfigError(f"an image is not one of the labelled samples the GAN teacher in {self.root} holds "
                                  "latents for (scale-jittered or resized?) and the teacher has no encoder; train "
                                  "with head.scale=null at the samples' size")
            missing = [b for b, ok in enumerate(found) if not ok]
            z[missing] = self.encode(images[missing]).to(z)
        maps = self.features_at(z)[1]
        mirror = torch.tensor(flip, device=self.device)[:, None, None, None]
        return {k: torch.where(mirror, v.flip(-1), v) for k, v in maps.items()}

    def _stored_latents(self, images: torch.Tensor) -> tuple[torch.Tensor, list[bool], list[bool]]:
        """``(z (B, z_dim), mirrored, found)`` of ``images`` from :meth:`use_latents`' table."""
        z = torch.zeros(images.shape[0], self.z_dim, device=self.device)
        flip, found = [], []
        pixels = ((images.float().permute(0, 2, 3, 1).cpu() + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        for b, im in enumerate(pixels):  # the uint8 pixels the set's PNGs hold (to_uint8's rounding)
            direct, mirrored = self._stored.get(_digest(im)), self._stored.get(_digest(im[:, ::-1]))
            hit = direct if direct is not None else mirrored
            if hit is not None:
                z[b] = hit.to(self.device)
            flip.append(direct is None and mirrored is not None)
            found.append(hit is not None)
        return z, flip, found

    @staticmethod
    def latents(n: int, seed: int, z_dim: int) -> torch.Tensor:
        """``(n, z_dim)`` latents, sample ``i`` from its own CPU generator seeded ``seed + i``."""
        return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(synth_sample(seed, i)))
                            for i in range(n)])

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
               return_features: bool = True, output_device: str | torch.device | None = "cpu",
               **ignored: Any) -> SampleOutput:
        """Draw ``n`` images in one generator pass per batch, with their exact features.

        ``steps`` is a diffusion option, ignored (a GAN draws in one pass); ``batch_size`` bounds the
        images per pass (default all ``n``); ``output_device``: where results go (None: the teacher's).
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        bs = int(batch_size or n)
        out_dev = torch.device(output_device) if output_device is not None else self.device
        z = self.latents(n, seed, self.z_dim)
        images, feats = [], {}
        for start in range(0, n, bs):
            img, maps = self.features_at(z[start:start + bs])
            images.append(img.clamp(-1, 1).to(out_dev))
            for k, v in maps.items():
                feats.setdefault(k, []).append(v.to(out_dev))
        features = {k: torch.cat(v) for k, v in feats.items()} if return_features else None
        return SampleOutput(torch.cat(images), features, [synth_sample(seed, i) for i in range(n)])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "encoder": self.encoder is not None}

    def extra_repr(self) -> str:
        return f"family={self.family!r}, root={str(self.root)!r}, encoder={self.encoder is not None}"
