"""Students by name, and their folder: dtlabel's descriptor plus smp's own hub format.

A saved student folder (``RUN/student``) holds

- ``student.safetensors``: the smp model's ``state_dict`` (no prefix), written by dtlabel;
- ``model.safetensors``: the same file under the name smp's hub loader reads, a hard link to
  ``student.safetensors`` (no second copy on disk; a copy only where the file system has no hard
  links);
- ``config.json`` (the model's init arguments and ``_model_class``) and ``README.md`` (smp's model
  card), both written by smp's own ``save_pretrained``;
- ``student.json``: dtlabel's descriptor (spec, input convention, class names, provenance), written
  last: a folder without it is incomplete.

So ``smp.from_pretrained("RUN/student")`` rebuilds the student in one line, offline, and
:func:`load_student` rebuilds it from the descriptor; both give the same outputs.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dtlabel.backbones import is_vision_transformer
from dtlabel.errors import ConfigError, ModelError, did_you_mean
from dtlabel.saving import ModelFiles

log = logging.getLogger(__name__)

FORMAT = "dtlabel-student/1"
STUDENT_FILES = ModelFiles("student", FORMAT)   # student.safetensors + student.json (dtlabel.saving)
WEIGHTS = STUDENT_FILES.weights
DESCRIPTOR = STUDENT_FILES.descriptor
HUB_CONFIG = "config.json"          # the names smp.from_pretrained reads
HUB_WEIGHTS = "model.safetensors"
INPUT = {"channels": "RGB", "range": [-1.0, 1.0], "formula": "x / 127.5 - 1"}

__all__ = ["StudentSpec", "architectures", "check_encoder", "create_student", "is_vision_transformer", "patch_size", "load_student", "read_student",
           "resolve_arch", "save_student", "student_folder", "DESCRIPTOR", "FORMAT", "HUB_CONFIG", "HUB_WEIGHTS",
           "INPUT", "WEIGHTS"]


@dataclass
class StudentSpec:
    """What rebuilds a student: smp architecture, encoder, classes and the other smp keyword args."""

    arch: str
    encoder_name: str
    classes: int
    smp_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "encoder_name": self.encoder_name, "encoder_weights": None,
                "classes": int(self.classes), "in_channels": 3, "smp_kwargs": dict(self.smp_kwargs)}


def _smp() -> Any:
    import segmentation_models_pytorch as smp

    return smp


def architectures() -> dict[str, str]:
    """``{lower-case key: smp class name}`` of every smp architecture (Unet, FPN, DeepLabV3Plus ...)."""
    smp = _smp()
    return {k: cls.__name__ for k, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def resolve_arch(name: str) -> str:
    """The smp class name of ``name`` (case-insensitive, ``deeplabv3+`` = ``DeepLabV3Plus``)."""
    archs = architectures()
    key = str(name).lower().replace("+", "plus").replace("-", "").replace("_", "")
    if key not in archs:
        names = list(archs.values())
        raise ConfigError(f"unknown student architecture '{name}'{did_you_mean(str(name), names)}; "
                          f"available: {', '.join(names)}")
    return archs[key]


def check_encoder(name: str) -> str:
    """Check that ``name`` is an smp encoder or ``tu-<timm model>``; returns it."""
    name = str(name)
    if name.startswith("tu-"):
        import timm

        models = timm.list_models()
        if name[3:] not in models:
            hint = did_you_mean(name, [f"tu-{m}" for m in models])
            raise ConfigError(f"unknown timm encoder '{name}'{hint}; "
                              "timm encoders are tu-<name> with a name from timm.list_models()")
        return name
    smp = _smp()
    names = list(smp.encoders.get_encoder_names())
    if name not in names:
        raise ConfigError(f"unknown student encoder '{name}'{did_you_mean(name, names)}; use an smp encoder "
                          "(resnet18, efficientnet-b0 ...) or a timm one as tu-<name> (tu-mobilenetv3_small_050 ...)")
    return name


def patch_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The patch size of a student's ViT encoder, None for a CNN encoder."""
    embed = getattr(getattr(getattr(_unwrap(model), "encoder", None), "model", None), "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


# smp's FPN and PSPNet scale their logits up by a fixed ``upsampling`` whatever ``encoder_depth``, so at
# another depth than smp's default their output is not (H, W): FPN reads strides 2^(depth-3)..,
# PSPNet the stride-2^depth map. The factor that gives (H, W) back:
_UPSAMPLING = {"FPN": lambda depth: 2 ** (depth - 3), "PSPNet": lambda depth: 2 ** depth}


def _fit_upsampling(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the ``upsampling`` that makes ``arch`` return logits at the input size."""
    rule = _UPSAMPLING.get(arch)
    if rule is None:
        return kwargs
    params = inspect.signature(getattr(_smp(), arch)).parameters
    if "encoder_depth" not in params or "upsampling" not in params:
        return kwargs
    depth = int(kwargs.get("encoder_depth", params["encoder_depth"].default))
    need = rule(depth)
    if "upsampling" not in kwargs:
        return kwargs if need == params["upsampling"].default else {**kwargs, "upsampling": need}
    if kwargs["upsampling"] != need:
        raise ConfigError(f"student {arch} with encoder_depth={depth} and upsampling={kwargs['upsampling']} "
                          f"would not output logits at the input size; set student.kwargs.upsampling={need} "
                          "or leave it out")
    return kwargs


def create_student(arch: str, encoder_name: str, classes: int, **smp_kwargs: Any) -> tuple[torch.nn.Module, StudentSpec]:
    """An smp model with random weights (``encoder_weights=None``: nothing is downloaded).

    The model maps images ``(B, 3, H, W)`` in [-1, 1] to logits ``(B, classes, H, W)``; H and W must
    be multiples of the encoder's output stride (``2 ** encoder_depth``; a ViT's patch size). A
    vision-transformer encoder (``tu-vit_tiny_patch16_224``, ...) goes under ``DPT`` and gets
    ``dynamic_img_size=True``, so it trains at the data set's size. For FPN and PSPNet at a
    non-default ``encoder_depth`` the ``upsampling`` that keeps that shape is added to the kwargs
    (and recorded in the spec).
    """
    arch = resolve_arch(arch)
    encoder_name = check_encoder(encoder_name)
    if int(classes) < 1:
        raise ConfigError(f"a student needs >= 1 classes, got {classes}")
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(smp_kwargs).items()}
    for bad in ("encoder_weights", "classes", "in_channels", "encoder_name"):
        if bad in kwargs:
            raise ConfigError(f"student.kwargs.{bad} is set by dtlabel; remove it")
    kwargs = _fit_upsampling(arch, kwargs)
    if encoder_name.startswith("tu-") and is_vision_transformer(encoder_name):
        if arch != "DPT":
            raise ConfigError(f"student.encoder={encoder_name} is a vision transformer (one feature map at its patch "
                              f"stride); smp builds it under student.arch=DPT only, not {arch}")
        kwargs.setdefault("dynamic_img_size", True)  # the data set's size, not the 224 of its position table
    try:
        model = _smp().create_model(arch, encoder_name=encoder_name, encoder_weights=None, classes=int(classes),
                                    in_channels=3, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise ModelError(f"cannot build {arch} with encoder {encoder_name} and options {kwargs}: {msg}") from None
    return model, StudentSpec(arch, encoder_name, int(classes), kwargs)


# ------------------------------------------------------------------------------------------------ save
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The smp model inside a DistributedDataParallel (``.module``) or ``torch.compile`` wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _card(extra: dict[str, Any]) -> dict[str, Any]:
    """Model-card fields for smp's ``save_pretrained``: the data set name and the ``test_*`` numbers."""
    card: dict[str, Any] = {}
    if isinstance(extra.get("data"), str):
        card["dataset"] = extra["data"]
    metrics = {k: v for k, v in extra.items()
               if k.startswith("test_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metrics:
        card["metrics"] = metrics
    return card


def _write_hub_format(folder: Path, model: torch.nn.Module, extra: dict[str, Any]) -> bool:
    """smp's hub files beside ``WEIGHTS`` in ``folder``; False (with a warning) if smp cannot write them.

    smp's ``save_pretrained`` writes ``config.json``, ``README.md`` and its own ``model.safetensors``;
    that copy is then replaced by a hard link to ``WEIGHTS`` (same bytes, one file on disk). Where the
    file system refuses hard links, smp's copy stays: the weights are then stored twice.
    """
    save = getattr(model, "save_pretrained", None)
    if not callable(save):
        log.warning("this segmentation-models-pytorch has no save_pretrained (the hub format needs smp >= 0.3.4): "
                    "%s loads with dtlabel.students.load_student only", folder.name)
        return False
    save(str(folder), **_card(extra))  # local folder only: push_to_hub stays False
    link = folder / f".{HUB_WEIGHTS}.link"
    try:
        os.link(folder / WEIGHTS, link)
    except OSError as exc:
        log.warning("no hard link for %s (%s): the weights are stored twice (%d bytes more)", HUB_WEIGHTS,
                    type(exc).__name__, (folder / HUB_WEIGHTS).stat().st_size)
        return True
    os.replace(link, folder / HUB_WEIGHTS)
    return True


def save_student(folder: str | Path, model: torch.nn.Module, spec: StudentSpec, **extra: Any) -> Path:
    """Write a student folder (module docstring): weights, smp's hub files, ``student.json`` last.

    The folder is replaced as a whole (atomic), so a reader sees the old folder or the new one.
    ``extra`` goes into the descriptor (class names, provenance); ``data`` and ``test_*`` numbers
    also into smp's model card.
    """
    net = _unwrap(model)
    desc = {**spec.to_dict(), "input": INPUT, "parameters": sum(p.numel() for p in net.parameters()), **extra}
    return STUDENT_FILES.save(folder, net.state_dict(), desc, metadata={"arch": spec.arch},
                              extra=lambda tmp: _write_hub_format(tmp, net, extra))


# ------------------------------------------------------------------------------------------------ load
def student_folder(path: str | Path) -> Path:
    """``path/student`` for a train-student run folder, else ``path`` itself."""
    p = Path(str(path)).expanduser()
    if (p / "student" / DESCRIPTOR).is_file():
        return p / "student"
    return p


def read_student(path: str | Path) -> dict[str, Any]:
    """The descriptor of a student folder or train-student run folder; ``ModelError`` if unusable."""
    folder = student_folder(path)
    if not folder.is_dir():
        raise ModelError(f"--student {path}: folder not found; pass a train-student run folder")
    desc = STUDENT_FILES.read(folder, what=f"--student {path}", fix="pass a finished train-student run folder")
    desc["_folder"] = str(folder)
    return desc


def init_from_student(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Start ``model`` (encoder and decoder) from the student of a finished train-student run: the
    second stage of a two-stage recipe (pseudo-labels + real labels, then the real labels alone).
    The architecture must match tensor for tensor; ``ModelError`` says what differs otherwise."""
    desc = read_student(path)
    state = STUDENT_FILES.state(desc["_folder"], what=f"--init {path}")
    mine = _unwrap(model).state_dict()
    wrong = [k for k in mine if k not in state or tuple(state[k].shape) != tuple(mine[k].shape)]
    if wrong or len(state) != len(mine):
        raise ModelError(f"--init {path}: its student ({desc.get('arch')}/{desc.get('encoder_name')}, "
                         f"{desc.get('classes')} classes) does not fit this one (e.g. {wrong[0] if wrong else 'extra tensors'}); "
                         "use the same student.arch, student.encoder, student.kwargs and data set")
    _unwrap(model).load_state_dict(state, strict=True)
    log.info("student initialised from %s (%d tensors)", desc["_folder"], len(state))
    return {"from": str(path), "tensors": len(state)}


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved student (eval mode) and its descriptor, from ``student.json`` + ``student.safetensors``."""
    desc = read_student(path)
    model, _ = create_student(desc["arch"], desc["encoder_name"], int(desc["classes"]), **desc.get("smp_kwargs", {}))
    STUDENT_FILES.load_into(model, desc["_folder"], what=f"--student {path}")
    return model.to(device).eval(), desc

