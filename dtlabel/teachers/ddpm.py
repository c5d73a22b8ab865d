"""Pixel-space DDPM teacher: a diffusers ``UNet2DModel`` + its noise schedule from a local folder.

Accepted folders (all written by ``save_pretrained``):

- a ``DDPMPipeline`` folder: ``model_index.json``, ``unet/``, ``scheduler/`` (what
  ``dtlabel fit-teacher`` writes into ``<run>/teacher/``);
- a bare UNet folder: ``config.json`` with ``"_class_name": "UNet2DModel"`` (and optionally a
  ``scheduler_config.json`` beside it; otherwise the default 1000-step linear ``DDPMScheduler``);
- a fit-teacher run folder holding either of those in ``teacher/``.

Image size rule: by default images must have the size the UNet was trained at
(``unet.config.sample_size``), because an unconditional DDPM's features drift at other sizes. With
``allow_any_size=True`` any size whose height and width are multiples of
``2 ** (len(down_blocks) - 1)`` is accepted (the UNet is fully convolutional).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dtlabel.errors import ConfigError, ModelError
from dtlabel.teachers.base import register_teacher
from dtlabel.teachers.diffusion import DiffusionTeacher
from dtlabel.teachers.loading import WEIGHTS, load_component, missing_files, read_model_json, resolve_model_root

logger = logging.getLogger(__name__)

__all__ = ["DDPMTeacher"]


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


@register_teacher("ddpm")
class DDPMTeacher(DiffusionTeacher):
    """Teacher on a pixel-space ``UNet2DModel`` (images ``(B, 3, H, W)`` in [-1, 1]).

    Keyword options: those of :class:`~dtlabel.teachers.diffusion.DiffusionTeacher` plus
    ``allow_any_size`` (default False, see the module docstring). Default blocks: every
    ``up_blocks.*``; default timesteps ``(50,)``.
    """

    folder_hint = (
        "model_index.json with unet/ + scheduler/ (DDPMPipeline) or config.json with _class_name "
        "UNet2DModel (a bare UNet)"
    )

    def __init__(self, path: str | Path, *, allow_any_size: bool = False, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        from diffusers import DDPMScheduler, UNet2DModel

        self.allow_any_size = bool(allow_any_size)
        self.record(allow_any_size=self.allow_any_size)
        root = self.root
        if (root / "model_index.json").is_file():
            index = read_model_json(root / "model_index.json")
            unet_entry = index.get("unet")
            unet_cls = unet_entry[1] if isinstance(unet_entry, list) and len(unet_entry) == 2 else None
            if unet_cls != "UNet2DModel":
                raise ModelError(
                    f"{root / 'model_index.json'} has unet {unet_cls!r}, not UNet2DModel; for Stable Diffusion "
                    "folders use family stable-diffusion (or family=auto)"
                )
            unet_dir, sched_file = "unet", root / "scheduler" / "scheduler_config.json"
        elif (cfg := root / "config.json").is_file() and read_model_json(cfg).get("_class_name") == "UNet2DModel":
            unet_dir, sched_file = None, root / "scheduler_config.json"
        else:
            raise ModelError(
                f"no DDPM model in {root}: looked for model_index.json with a UNet2DModel unet/ (a DDPMPipeline "
                "folder), config.json with _class_name UNet2DModel (a bare UNet folder) and a teacher/ subfolder "
                "(a fit-teacher run folder)"
            )
        missing = missing_files(root, {unet_dir or "": ("config.json", WEIGHTS)})
        if missing:
            raise ModelError(f"the DDPM folder {root} is incomplete: missing {', '.join(missing)}; download or save "
                             "it again")
        self.unet = load_component(UNet2DModel, root, unet_dir).float()
        if sched_file.is_file():
            self.scheduler_config = dict(read_model_json(sched_file))
        else:
            logger.info("no scheduler config in %s; using the default DDPMScheduler (1000 linear steps)", root)
            self.scheduler_config = dict(DDPMScheduler().config)
        if self.unet.config.get("num_class_embeds") or self.unet.config.get("class_embed_type"):
            raise ModelError(f"{root} holds a class-conditional UNet2DModel; dtlabel teachers are unconditional")
        self._finish_init()
        logger.info(
            "loaded DDPM teacher from %s (%.1fM parameters, %dx%d px)",
            root,
            sum(p.numel() for p in self.unet.parameters()) / 1e6,
            *self.image_size,
        )

    @classmethod
    def matches(cls, root: Path) -> bool:
        """True for a DDPMPipeline-style folder or a bare ``UNet2DModel`` folder."""
        root = resolve_model_root(root)
        if (root / "model_index.json").is_file():
            entry = read_model_json(root / "model_index.json").get("unet")
            return isinstance(entry, list) and len(entry) == 2 and entry[1] == "UNet2DModel"
        cfg = root / "config.json"
        return cfg.is_file() and read_model_json(cfg).get("_class_name") == "UNet2DModel"

    @property
    def image_size(self) -> tuple[int, int]:
        return _pair(self.unet.config.sample_size)

    @property
    def latent_factor(self) -> int:
        return 1

    @property
    def model_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def check_image_size(self, height: int, width: int) -> None:
        """Trained size only, unless ``allow_any_size`` (then multiples of :attr:`size_multiple`)."""
        m = self.size_multiple
        if not self.allow_any_size:
            if (height, width) != self.image_size:
                h, w = self.image_size
                raise ConfigError(
                    f"images are {height}x{width} but the teacher in {self.root} was trained at {h}x{w}; resize "
                    f"the images to {h}x{w} or pass allow_any_size=true (then sizes must be multiples of {m})"
                )
        elif height % m or width % m:
            ph, pw = -(-height // m) * m, -(-width // m) * m
            raise ConfigError(
                f"images are {height}x{width} but this teacher needs multiples of {m}; pad or resize to {ph}x{pw}"
            )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel space: ``x0`` is the image itself, ``(B, 3, H, W)`` in [-1, 1]."""
        return images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = self._run_unet(x, t)
        # models trained with a learned variance predict (eps, variance): only the DDPM sampler with a
        # learned variance_type uses the second half, DDIM and DPM-Solver want eps alone
        learned = str(self.scheduler_config.get("variance_type", "")).startswith("learned")
        if out.shape[1] == 2 * x.shape[1] and not (learned and self.sampler == "ddpm"):
            out = out[:, : x.shape[1]]
        return out
