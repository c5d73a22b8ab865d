"""Few-label task heads on frozen teacher features, created by name (timm-style registry).

::

    head = create_head("interpreter", teacher.feature_spec, num_classes=8, width=256)
    losses = head.loss(teacher.features(images, seed=seeds), masks)     # {"loss", "ce", "dice"}
    probs, uncertainty = head.predict(features, size=(H, W))           # (B, C, H, W), (B, H, W)
    head.save("runs/train-head/x/head", teacher_hash=teacher.teacher_hash(), class_names=names)
    head = load_head("runs/train-head/x")                              # no training code needed

Heads: ``interpreter`` (DreamTeacher's multi-scale conv interpreter; uncertainty = predictive
entropy) and ``mlp-ensemble`` (DDPM-seg's pixel MLPs; uncertainty = Jensen-Shannon divergence).
They register themselves with ``@register_head``, as a plug-in head would.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError, ModelError, did_you_mean
from dtlabel.features import FeatureSpec
from dtlabel.heads.base import (
    DESCRIPTOR,
    HEAD_FILES,
    HEADS,
    Head,
    entropy,
    image_score,
    read_descriptor,
    register_head,
    sample_features,
)

# the built-in heads register themselves on import
from dtlabel.heads.interpreter import Interpreter
from dtlabel.heads.mlp import MLPEnsemble, js_divergence

__all__ = [
    "HEADS",
    "Head",
    "Interpreter",
    "MLPEnsemble",
    "create_head",
    "entropy",
    "head_class",
    "head_options",
    "image_score",
    "js_divergence",
    "load_head",
    "predict_images",
    "register_head",
    "sample_features",
    "to_teacher_size",
]

def head_class(name: str) -> type[Head]:
    """The class registered as ``name``; ``ConfigError`` with close matches otherwise."""
    return HEADS.get(name)


def head_options(name: str) -> list[str]:
    """Keyword options accepted by head ``name`` (besides ``spec`` and ``num_classes``)."""
    params = inspect.signature(head_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "spec", "num_classes")]


def create_head(name: str, spec: FeatureSpec, num_classes: int, **kwargs: Any) -> Head:
    """Build head ``name`` (a name in :data:`HEADS`) for maps described by ``spec``.

    Raises ``ConfigError`` for an unknown kind or option (with close matches).
    """
    cls = head_class(name)
    allowed = head_options(name)
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} for head {name!r}{did_you_mean(key, allowed)}; "
                              f"options: {', '.join(allowed)}")
    return cls(spec, num_classes, **kwargs)


def load_head(path: str | Path, device: str | torch.device = "cpu") -> Head:
    """Load a head saved by :meth:`Head.save`: the head folder or a train-head run folder (``head/``).

    The returned head is in eval mode; its descriptor (teacher hash, class names, label ids, ...)
    is in ``head.meta``. Raises ``ModelError`` for a missing, incomplete or mismatched folder.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"head folder not found: {folder}; pass a train-head run folder or its head/ folder")
    if not (folder / DESCRIPTOR).is_file() and (folder / "head" / DESCRIPTOR).is_file():
        folder = folder / "head"
    if not (folder / DESCRIPTOR).is_file():
        raise ModelError(f"no {DESCRIPTOR} in {folder}: not a dtlabel head (or the train-head run is unfinished)")
    desc = read_descriptor(folder)
    try:
        spec = FeatureSpec.from_dict(desc["feature_spec"])
        head = create_head(str(desc["kind"]), spec, int(desc["num_classes"]), **dict(desc["kwargs"]))
    except ConfigError as e:
        raise ModelError(f"{folder / DESCRIPTOR}: {e}") from None
    HEAD_FILES.load_into(head, folder)
    head.meta = desc
    return head.to(device).eval()


@torch.no_grad()
def predict_images(head: Head, teacher: Any, images: torch.Tensor, seed: int | Sequence[int] = 0,
                   size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Label images end to end: resize to the teacher's size, read features, predict.

    ``images (B, 3, H, W)`` in [-1, 1]; ``seed``: the teacher's noise seed(s). Returns ``probs
    (B, C, H', W')`` and ``uncertainty (B, H', W')`` at ``size`` (default: the images' ``(H, W)``).
    """
    out = tuple(size) if size is not None else tuple(images.shape[-2:])
    x = to_teacher_size(images, teacher.image_size)
    return head.predict(teacher.features(x, seed=seed), out)


def to_teacher_size(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``images (B, 3, H, W)`` in [-1, 1] to ``size`` (bilinear, antialiased) if needed."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(-1, 1)
