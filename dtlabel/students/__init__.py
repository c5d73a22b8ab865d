"""Dense-prediction students: segmentation-models-pytorch models, built by name, saved for plain smp.

::

    model = create_student("Unet", "tu-mobilenetv3_small_050", classes=7, encoder_depth=3,
                           decoder_channels=[32, 16, 8])                 # encoder_weights=None, always
    info = load_backbone(model, "weights.safetensors")                  # optional encoder init
    save_student("runs/train-student/x/student", model, spec, class_names=[...])
    model, desc = load_student("runs/train-student/x")                  # eval mode

The saved folder holds ``student.safetensors`` (the smp model's own ``state_dict``, no prefix) and
``student.json`` (written last). Plain smp rebuilds it without dtlabel::

    m = smp.create_model(d["arch"], encoder_name=d["encoder_name"], encoder_weights=None,
                         classes=d["classes"], in_channels=3, **d["smp_kwargs"])
    m.load_state_dict(safetensors.torch.load_file(".../student.safetensors"), strict=True)

Inputs are RGB images scaled to [-1, 1] (``x / 127.5 - 1``), the convention of every dtlabel model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dtlabel.errors import ConfigError, ModelError, did_you_mean
from dtlabel.io import atomic_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "dtlabel-student/1"
WEIGHTS = "student.safetensors"
DESCRIPTOR = "student.json"
INPUT = {"channels": "RGB", "range": [-1.0, 1.0], "formula": "x / 127.5 - 1"}

__all__ = ["StudentSpec", "architectures", "create_student", "load_backbone", "load_student", "resolve_arch",
           "check_encoder", "save_student", "FORMAT", "WEIGHTS", "DESCRIPTOR"]


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


def create_student(arch: str, encoder_name: str, classes: int, **smp_kwargs: Any) -> tuple[torch.nn.Module, StudentSpec]:
    """An smp model with random weights (``encoder_weights=None``: nothing is downloaded)."""
    arch = resolve_arch(arch)
    encoder_name = check_encoder(encoder_name)
    if int(classes) < 1:
        raise ConfigError(f"a student needs >= 1 classes, got {classes}")
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(smp_kwargs).items()}
    for bad in ("encoder_weights", "classes", "in_channels", "encoder_name"):
        if bad in kwargs:
            raise ConfigError(f"student.kwargs.{bad} is set by dtlabel; remove it")
    try:
        model = _smp().create_model(arch, encoder_name=encoder_name, encoder_weights=None, classes=int(classes),
                                    in_channels=3, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise ModelError(f"cannot build {arch} with encoder {encoder_name} and options {kwargs}: {msg}") from None
    return model, StudentSpec(arch, encoder_name, int(classes), kwargs)


# ------------------------------------------------------------------------------------------------ backbone
def _norm(key: str) -> str:
    """Key normal form for matching timm / torchvision / smp encoder names: timm's feature wrappers
    flatten ``blocks.0`` into ``blocks_0`` and smp's timm encoders add ``model.``."""
    for prefix in ("module.", "encoder.", "model."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key.replace(".", "_")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the user's file
        msg = " ".join(str(exc).split())[:160]
        raise ModelError(f"--backbone {path}: cannot read weights ({msg}); pass a .safetensors or torch "
                         "state-dict file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"--backbone {path}: not a state dict of tensors")
    return obj


def backbone_file(path: str | Path) -> tuple[Path, str | None]:
    """The weights file of ``--backbone``: a file, or a folder holding one (``run.json`` with a
    ``backbone`` entry, a train-student run, or a single ``*.safetensors``); also the key prefix to
    take (``"encoder."`` from a student)."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p, None
    if not p.is_dir():
        raise ModelError(f"--backbone {p}: not found; pass a weights file (.safetensors/.pth) or a run folder")
    run_json = p / "run.json"
    if run_json.is_file():
        try:
            desc = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            desc = {}
        if desc.get("backbone"):
            return backbone_file(p / str(desc["backbone"]))
        if desc.get("command") == "train-student":
            return p / "student" / WEIGHTS, "encoder."
    if (p / WEIGHTS).is_file():
        return p / WEIGHTS, "encoder."
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.pth")) + sorted(p.glob("*.bin"))
    if len(files) == 1:
        return files[0], None
    raise ModelError(f"--backbone {p}: expected one weights file in the folder, found {len(files)}; "
                     "pass the file itself")


def load_backbone(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Initialise ``model.encoder`` from a timm-/torchvision-format file or a run folder.

    Keys are matched in a normal form (prefixes ``module.``/``encoder.``/``model.`` dropped, dots as
    underscores); extra keys (a classifier) are ignored. Every encoder tensor must be found with
    the right shape, otherwise ``ModelError``. Returns ``{"file", "tensors"}``.
    """
    file, prefix = backbone_file(path)
    if not file.is_file():
        raise ModelError(f"--backbone {path}: {file} not found; the run is incomplete")
    state = _read_weights(file)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    by_norm: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        by_norm.setdefault(_norm(k), v)
    enc = model.encoder.state_dict()  # type: ignore[union-attr]
    new, missing, wrong = {}, [], []
    for k, v in enc.items():
        src = by_norm.get(_norm(k))
        if src is None:
            if k.endswith("num_batches_tracked"):
                new[k] = v
                continue
            missing.append(k)
        elif tuple(src.shape) != tuple(v.shape):
            wrong.append(f"{k} {tuple(src.shape)} vs {tuple(v.shape)}")
        else:
            new[k] = src.to(v.dtype)
    if missing or wrong:
        what = (f"{len(missing)} encoder tensors missing (e.g. {missing[0]})" if missing
                else f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        raise ModelError(f"--backbone {file}: does not fit the student encoder: {what}; "
                         "check student.encoder matches the weights")
    model.encoder.load_state_dict(new, strict=True)  # type: ignore[union-attr]
    log.info("encoder initialised from %s (%d tensors)", file, len(new))
    return {"file": str(file), "tensors": len(new)}


# ------------------------------------------------------------------------------------------------ save / load
def save_student(folder: str | Path, model: torch.nn.Module, spec: StudentSpec, **extra: Any) -> Path:
    """Write ``folder/student.safetensors`` + ``folder/student.json`` (descriptor last; atomic folder)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    desc = {"format": FORMAT, **spec.to_dict(), "input": INPUT,
            "parameters": sum(p.numel() for p in model.parameters()), **extra}
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "arch": spec.arch})
        write_json(tmp / DESCRIPTOR, desc)
    return folder


def student_folder(path: str | Path) -> Path:
    p = Path(str(path)).expanduser()
    if (p / "student" / DESCRIPTOR).is_file():
        return p / "student"
    return p


def read_student(path: str | Path) -> dict[str, Any]:
    """The descriptor of a student folder or train-student run folder; ``ModelError`` if unusable."""
    folder = student_folder(path)
    desc_path = folder / DESCRIPTOR
    if not folder.is_dir():
        raise ModelError(f"--student {path}: folder not found; pass a train-student run folder")
    try:
        desc = json.loads(desc_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"--student {path}: cannot read {DESCRIPTOR} ({type(exc).__name__}); "
                         "pass a finished train-student run folder") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ModelError(f"--student {path}: {desc_path} is not a dtlabel student descriptor")
    desc["_folder"] = str(folder)
    return desc


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved student (eval mode) and its descriptor."""
    from safetensors.torch import load_file

    desc = read_student(path)
    model, _ = create_student(desc["arch"], desc["encoder_name"], int(desc["classes"]), **desc.get("smp_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(Path(desc["_folder"]) / WEIGHTS)), strict=True)
    except Exception as exc:  # noqa: BLE001
        msg = " ".join(str(exc).split())[:200]
        raise ModelError(f"--student {path}: weights do not load ({msg})") from None
    return model.to(device).eval(), desc
