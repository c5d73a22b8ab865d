"""Encoder initialisation of a student from timm-, torchvision- or smp-format weights.

``--backbone`` takes a weights file (``.safetensors`` or a torch state dict) or a folder holding
one: a run folder whose ``run.json`` names its ``backbone`` file, a train-student run, a student
folder, or a folder with a single weights file. Keys are matched by a normal form, so the same
file initialises the encoder whatever prefix its producer used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dtlabel.backbones import is_vision_transformer
from dtlabel.errors import ModelError
from dtlabel.io import read_json
from dtlabel.students.model import WEIGHTS

log = logging.getLogger(__name__)

__all__ = ["backbone_file", "load_backbone"]


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
    ``backbone`` entry, a train-student run, a checkpoint folder ``RUN/checkpoints/step_N`` of
    pretrain or train-student, or a single ``*.safetensors``); also the key prefix to take
    (``"encoder."`` from a student, ``"auto"`` for a checkpoint: ``backbone.`` or ``encoder.``)."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p, None
    if not p.is_dir():
        raise ModelError(f"--backbone {p}: not found; pass a weights file (.safetensors/.pth) or a run folder")
    run_json = p / "run.json"
    if run_json.is_file():
        desc = read_json(run_json, error=ModelError, what=f"--backbone {p}: run.json",
                         fix="pass the weights file itself")
        if desc.get("backbone"):
            return backbone_file(p / str(desc["backbone"]))
        if desc.get("command") == "train-student":
            return p / "student" / WEIGHTS, "encoder."
    if (p / WEIGHTS).is_file():
        return p / WEIGHTS, "encoder."
    if (p / "model.safetensors").is_file() and (p / "state.pt").is_file():
        # a checkpoint folder (RUN/checkpoints/step_N): a pretrain run's backbone or a student's encoder
        return p / "model.safetensors", "auto"
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.pth")) + sorted(p.glob("*.bin"))
    if len(files) == 1:
        return files[0], None
    raise ModelError(f"--backbone {p}: expected one weights file in the folder, found {len(files)}; "
                     "pass the file itself")


def _which(file: Path) -> str:
    """The remedy of a mismatch: the network a pretrain run's ``backbone.json`` names, if any."""
    desc_path = file.parent / "backbone.json"
    if desc_path.is_file():
        try:
            name = read_json(desc_path).get("timm_name")
        except ModelError:
            name = None
        if name:
            return f"it holds a pretrained {name}: use student.encoder=tu-{name}" + (
                " with student.arch=DPT" if is_vision_transformer(str(name)) else "")
    return "check student.encoder matches the weights"


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
    if prefix == "auto":
        prefix = "backbone." if any(k.startswith("backbone.") for k in state) else "encoder."
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
        raise ModelError(f"--backbone {file}: does not fit the student encoder: {what}; {_which(file)}")
    model.encoder.load_state_dict(new, strict=True)  # type: ignore[union-attr]
    log.info("encoder initialised from %s (%d tensors)", file, len(new))
    return {"file": str(file), "tensors": len(new)}
