"""Diffusion teachers behind one interface: hooks on decoder blocks -> named multi-scale features.

Registry and factories (timm-style)::

    teacher = load_teacher("runs/fit-teacher/2024-...")          # family detected from the folder
    teacher = create_teacher("ddpm", path, timesteps=[50, 150], blocks=["up_blocks.1", "mid_block"])
    feats = teacher.features(images)                              # {"up_blocks.1@t=50+150": (B, C, h, w)}
    spec = teacher.feature_spec                                   # names, channels, strides

Everything loads from local folders; the Hugging Face Hub is switched to offline mode on import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network when loading models

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from dtlabel.errors import ConfigError, ModelError, did_you_mean  # noqa: E402
from dtlabel.teachers.base import (  # noqa: E402
    FeatureSpec,
    SampleOutput,
    Teacher,
    feature_key,
    hash_model_folder,
    read_json,
    resolve_model_root,
)
from dtlabel.teachers.ddpm import DDPMTeacher  # noqa: E402
from dtlabel.teachers.stable_diffusion import StableDiffusionTeacher  # noqa: E402

__all__ = [
    "TEACHERS",
    "DDPMTeacher",
    "FeatureSpec",
    "SampleOutput",
    "StableDiffusionTeacher",
    "Teacher",
    "create_teacher",
    "detect_family",
    "feature_key",
    "hash_model_folder",
    "load_teacher",
    "register_teacher",
    "teacher_from_config",
]

# Detection order matters: the most specific family first.
TEACHERS: dict[str, type[Teacher]] = {
    "stable-diffusion": StableDiffusionTeacher,
    "ddpm": DDPMTeacher,
}


def register_teacher(name: str) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator adding a :class:`Teacher` subclass to :data:`TEACHERS` under ``name``."""

    def wrap(cls: type[Teacher]) -> type[Teacher]:
        if name in TEACHERS and TEACHERS[name] is not cls:
            raise ValueError(f"teacher family {name!r} is already registered to {TEACHERS[name].__name__}")
        TEACHERS[name] = cls
        return cls

    return wrap


def _family_class(name: str) -> type[Teacher]:
    if name not in TEACHERS:
        raise ConfigError(
            f"unknown teacher family {name!r}; choose one of {sorted(TEACHERS)} or auto{did_you_mean(name, TEACHERS)}"
        )
    return TEACHERS[name]


def create_teacher(name: str, path: str | Path, **kwargs: Any) -> Teacher:
    """Build the teacher of family ``name`` (a key of :data:`TEACHERS`) from the folder ``path``."""
    return _family_class(name)(path, **kwargs)


def detect_family(path: str | Path) -> str:
    """Family name of the diffusers model in ``path`` (a model folder or a fit-teacher run folder).

    Raises ``ModelError`` if the folder is missing or holds no recognisable model.
    """
    root = resolve_model_root(path)
    for name, cls in TEACHERS.items():
        if cls.matches(root):
            return name
    what = ""
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        what = f" (model_index.json describes {index.get('_class_name', 'an unknown pipeline')!r})"
    raise ModelError(
        f"no diffusers teacher model in {root}{what}: looked for model_index.json with unet/ + scheduler/ "
        "(DDPMPipeline) or unet/ + vae/ + text_encoder/ + tokenizer/ (Stable Diffusion), config.json with "
        "_class_name UNet2DModel (a bare UNet) and a teacher/ subfolder (a fit-teacher run folder)"
    )


def load_teacher(path: str | Path, family: str = "auto", **kwargs: Any) -> Teacher:
    """Load a teacher from a local folder, detecting its family unless ``family`` is given.

    ``path``: a fit-teacher run folder (uses its ``teacher/``), a ``DDPMPipeline`` folder, a bare
    ``UNet2DModel`` folder or a Stable Diffusion folder. ``kwargs`` go to the family's constructor
    (``blocks``, ``timesteps``, ``concat_timesteps``, ``noise_draws``, ``amp``, ``sampler``, ...).
    """
    if family != "auto":
        cls = _family_class(family)
        resolve_model_root(path)  # the "folder not found" error before anything else
        return cls(path, **kwargs)
    return create_teacher(detect_family(path), path, **kwargs)


TEACHER_OPTIONS = ("blocks", "timesteps", "concat_timesteps", "noise_draws", "batch_timesteps", "early_stop",
                   "sampler", "sample_steps", "eta", "sample_features")
_FAMILY_OPTIONS = {"ddpm": ("allow_any_size",), "stable-diffusion": ("prompt", "guidance_scale")}


def teacher_from_config(path: str | Path, cfg: Any, amp: str = "auto") -> Teacher:
    """Load the teacher in ``path`` with the options of a ``teacher`` config section.

    ``path`` is a fit-teacher run folder or any local diffusers model folder (``--teacher DIR``).
    """
    from omegaconf import OmegaConf

    opts = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    family = str(opts.get("family") or "auto")
    if family == "auto":
        family = detect_family(path)
    kwargs = {k: opts[k] for k in TEACHER_OPTIONS if k in opts}
    kwargs.update({k: opts[k] for k in _FAMILY_OPTIONS.get(family, ()) if k in opts})
    if kwargs.get("timesteps") is not None:
        kwargs["timesteps"] = tuple(int(t) for t in kwargs["timesteps"])
    return create_teacher(family, path, amp=amp, **kwargs)
