"""Teachers behind one interface (``base.Teacher``): frozen models -> named multi-scale features.

The built-in families are diffusion models (``diffusion.DiffusionTeacher``: hooks on UNet decoder
blocks); a new family is one module whose class is decorated with ``@register_teacher("name")``.
Registry and factories (timm-style)::

    teacher = load_teacher("runs/fit-teacher/2024-...")          # family detected from the folder
    teacher = create_teacher("ddpm", path, timesteps=[50, 150], blocks=["up_blocks.1", "mid_block"])
    feats = teacher.features(images)                              # {"up_blocks.1@t=50+150": (B, C, h, w)}
    spec = teacher.feature_spec                                   # names, channels, strides

Everything loads from local folders (``local_files_only``, safetensors first); importing this package
changes nothing in the process (the ``dtlabel`` command sets the hub offline when it runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtlabel.errors import ModelError
from dtlabel.features import FeatureSpec, feature_key
from dtlabel.teachers.base import TEACHERS, SampleOutput, Teacher, register_teacher
from dtlabel.teachers.diffusion import DiffusionTeacher
from dtlabel.teachers.loading import (
    hash_model_folder,
    read_model_json,
    resolve_model_root,
    warn_if_stopped_early,
)

# the built-in families register themselves on import, as a plug-in would
from dtlabel.teachers.ddpm import DDPMTeacher
from dtlabel.teachers.stable_diffusion import StableDiffusionTeacher
from dtlabel.teachers.gan import GanTeacher

__all__ = [
    "TEACHERS",
    "TEACHER_OPTIONS",
    "DDPMTeacher",
    "DiffusionTeacher",
    "FeatureSpec",
    "GanTeacher",
    "SampleOutput",
    "StableDiffusionTeacher",
    "Teacher",
    "create_teacher",
    "detect_family",
    "detection_order",
    "feature_key",
    "hash_model_folder",
    "load_teacher",
    "register_teacher",
    "resolve_model_root",
    "teacher_from_config",
]


def create_teacher(name: str, path: str | Path, **kwargs: Any) -> Teacher:
    """Build the teacher of family ``name`` (a name in :data:`TEACHERS`) from the folder ``path``."""
    teacher = TEACHERS.get(name)(path, **kwargs)
    warn_if_stopped_early(path)
    return teacher


def detection_order() -> list[str]:
    """Family names in the order :func:`detect_family` asks them: higher ``detect_priority`` first,
    then registration order (so ``stable-diffusion`` is asked before ``ddpm``)."""
    ranked = sorted(enumerate(TEACHERS.items()), key=lambda e: (-e[1][1].detect_priority, e[0]))
    return [name for _, (name, _) in ranked]


def detect_family(path: str | Path) -> str:
    """Family name of the model in ``path`` (a model folder or a fit-teacher run folder).

    Raises ``ModelError`` if the folder is missing or holds no recognisable model.
    """
    root = resolve_model_root(path)
    order = detection_order()
    for name in order:
        if TEACHERS[name].matches(root):
            return name
    what = ""
    if (root / "model_index.json").is_file():
        index = read_model_json(root / "model_index.json")
        what = f" (model_index.json describes {index.get('_class_name', 'an unknown pipeline')!r})"
    hints = [TEACHERS[name].folder_hint or f"a {name} model" for name in order]
    raise ModelError(
        f"no diffusers teacher model in {root}{what}: looked for {', '.join(hints)} and a teacher/ subfolder "
        "(a fit-teacher run folder)"
    )


def load_teacher(path: str | Path, family: str = "auto", **kwargs: Any) -> Teacher:
    """Load a teacher from a local folder, detecting its family unless ``family`` is given.

    ``path``: a fit-teacher run folder (uses its ``teacher/``), a ``DDPMPipeline`` folder, a bare
    ``UNet2DModel`` folder or a Stable Diffusion folder. ``kwargs`` go to the family's constructor
    (``blocks``, ``timesteps``, ``concat_timesteps``, ``noise_draws``, ``amp``, ``sampler``, ...).
    """
    if family != "auto":
        cls = TEACHERS.get(family)
        resolve_model_root(path)  # the "folder not found" error before anything else
        teacher = cls(path, **kwargs)
        warn_if_stopped_early(path)
        return teacher
    return create_teacher(detect_family(path), path, **kwargs)


#: options of a ``teacher`` config section that every diffusion family takes (``amp`` comes from the
#: command); each family adds its own (``Teacher.options()``: ``allow_any_size``, ``prompt``, ...)
TEACHER_OPTIONS = tuple(o for o in DiffusionTeacher.options() if o != "amp")


def teacher_from_config(path: str | Path, cfg: Any, amp: str = "auto") -> Teacher:
    """Load the teacher in ``path`` with the options of a ``teacher`` config section.

    ``path`` is a fit-teacher run folder or any local diffusers model folder (``--teacher DIR``).
    Keys the family does not take (another family's options) are ignored; ``amp`` comes from the
    command, not the section.
    """
    from omegaconf import OmegaConf

    opts = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    family = str(opts.get("family") or "auto")
    if family == "auto":
        family = detect_family(path)
    options = TEACHERS.get(family).options()
    kwargs = {k: opts[k] for k in options if k in opts and k != "amp"}
    if kwargs.get("timesteps") is not None:
        kwargs["timesteps"] = tuple(int(t) for t in kwargs["timesteps"])
    if "amp" in options:  # the command's precision, for families that have one
        kwargs["amp"] = amp
    return create_teacher(family, path, **kwargs)
