"""The head interface: a small trainable model that turns teacher features into class probabilities.

A head is sized from a :class:`~dtlabel.features.FeatureSpec` (names, channels, strides of the
teacher's maps) and a class count, and offers three things:

- ``loss(features, masks) -> {"loss": ..., ...}``: its training objective on one batch;
- ``predict(features, size) -> (probs (B, C, H, W), uncertainty (B, H, W))``: for evaluation and
  for labelling synthetic or unlabeled images;
- ``save(folder)`` / :func:`dtlabel.heads.load_head`: safetensors weights + a JSON descriptor
  (registry name + kwargs, feature spec, teacher hash, class names, label ids), no pickles.

Features are always the teacher's maps at their native resolution, ``{name: (B, C_l, h_l, w_l)}``
with ``h_l = H_img / stride_l``; heads upsample them themselves (bilinear, ``align_corners=False``).

A head kind is registered with ``@register_head("name")`` (built-ins and plug-ins alike), and its
constructor arguments are recorded in ``head.kwargs`` without the head listing them (diffusers'
``register_to_config`` idea), so ``save`` / ``load_head`` rebuild it from the registry name alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dtlabel.errors import ModelError
from dtlabel.features import FeatureSpec
from dtlabel.saving import ModelFiles, RecordsConfig
from dtlabel.registry import Registry

__all__ = ["HEADS", "HEAD_FORMAT", "Head", "entropy", "image_score", "pixel_grid", "register_head", "sample_features"]

HEAD_FORMAT = "dtlabel-head/1"
#: a saved head: ``head.safetensors`` + ``head.json`` (:mod:`dtlabel.saving`)
HEAD_FILES = ModelFiles("head", HEAD_FORMAT)
WEIGHTS = HEAD_FILES.weights
DESCRIPTOR = HEAD_FILES.descriptor

#: Head kinds by name. Built-ins and plug-ins register the same way, with :func:`register_head`.
HEADS: Registry[type[Head]] = Registry("head kind", attribute="kind")


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator adding a :class:`Head` subclass to :data:`HEADS` as kind ``name``.

    Sets the class's ``kind`` to ``name``; ``ValueError`` if another class has that name.
    """
    return HEADS.register(name)


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (``0 log 0 = 0``); in ``[0, log C]``."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim)


def image_score(uncertainty: torch.Tensor, top: float = 0.1) -> torch.Tensor:
    """Per-image uncertainty score: mean of the ``top`` fraction (default 10%) of the largest pixel
    values of ``uncertainty (B, H, W)`` -> ``(B,)`` (DatasetGAN / DDPM-seg's filtering score)."""
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    flat = uncertainty.reshape(uncertainty.shape[0], -1)
    k = max(1, math.ceil(top * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(1)


def pixel_grid(size: Sequence[int], rows: slice | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised ``(x, y)`` coordinates in [-1, 1] of the pixel centres of an ``(H, W)`` image, for
    :func:`sample_features`: ``(n_rows * W, 2)``, row-major (optionally only ``rows``)."""
    h, w = int(size[0]), int(size[1])
    r = torch.arange(h, device=device, dtype=torch.float32)[rows if rows is not None else slice(None)]
    c = torch.arange(w, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid((r + 0.5) / h * 2 - 1, (c + 0.5) / w * 2 - 1, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def sample_features(features: Mapping[str, torch.Tensor], names: Sequence[str], coords: torch.Tensor) -> torch.Tensor:
    """Per-pixel feature vectors at chosen points, without upsampling whole maps.

    ``coords (B, P, 2)`` are normalised ``(x, y)`` pixel centres (see :func:`pixel_grid`); the result
    ``(B, P, D)`` (``D`` = sum of the maps' channels, in ``names`` order) equals bilinearly
    upsampling every map to the image size (``align_corners=False``) and concatenating, read at those
    pixels, but costs ``B * P * D`` floats instead of ``B * H * W * D``.
    """
    grid = coords.unsqueeze(1)  # (B, 1, P, 2)
    cols = [F.grid_sample(features[n].float(), grid.to(features[n].device), mode="bilinear",
                          padding_mode="border", align_corners=False)[:, :, 0].transpose(1, 2) for n in names]
    return torch.cat(cols, dim=2)


class Head(RecordsConfig, torch.nn.Module, ABC):
    """Base of every head. Subclasses implement ``loss`` and ``_predict`` and register with
    ``@register_head("kind")``; their ``__init__(spec, num_classes, **options)`` calls
    ``super().__init__(spec, num_classes)``.

    Attributes: ``spec`` (the feature spec it was built for), ``num_classes``, ``kwargs`` (the
    constructor options, recorded automatically and saved in the descriptor so :func:`load_head`
    rebuilds the same module), ``meta`` (descriptor fields of a loaded head: teacher hash, class
    names, label ids, ...).
    """

    #: registry name, set by :func:`register_head`
    kind: ClassVar[str] = ""
    #: optimiser defaults of this head kind (used when the config leaves lr / weight_decay null)
    default_lr: ClassVar[float] = 1e-3
    default_weight_decay: ClassVar[float] = 0.0
    #: True if the loss depends on batch statistics (BatchNorm): then it must see whole batches and
    #: training does not split them into micro-batches
    batch_statistics: ClassVar[bool] = False
    #: what ``predict``'s uncertainty means, for descriptors and reports
    uncertainty_kind: ClassVar[str] = ""

    kwargs: dict[str, Any]

    built_from: ClassVar[tuple[str, ...]] = ("spec", "num_classes")  # in the descriptor, not in kwargs

    def __init__(self, spec: FeatureSpec, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = int(num_classes)
        self.__dict__.setdefault("kwargs", {})  # a head without its own __init__ has no options
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def loss(self, features: Mapping[str, torch.Tensor], masks: torch.Tensor, ignore_index: int = 255,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training objective on one batch: ``masks (B, H, W)`` class ids at the label resolution.

        Returns ``{"loss": scalar with grad, ...parts}``. ``generator`` drives any sampling the
        objective does (pixel subsets), for reproducible runs.
        """

    @abstractmethod
    def _predict(self, features: Mapping[str, torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (B, C, H, W), uncertainty (B, H, W))`` at ``size``; called in eval mode, no grad."""

    # ------------------------------------------------------------------ shared
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def image_size(self, features: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        """The image size the features were computed at: map size times its stride (first map)."""
        name, _, stride = next(iter(self.spec))
        h, w = features[name].shape[-2:]
        return int(h) * stride, int(w) * stride

    def check_features(self, features: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ModelError`` unless ``features`` hold every map of :attr:`spec` with its channels."""
        missing = [n for n in self.spec.names if n not in features]
        if missing:
            have = list(features)
            raise ModelError(
                f"features lack {missing[0]!r} (and {len(missing) - 1} more) that this head was trained on; got "
                f"{have[:4]}{'...' if len(have) > 4 else ''}; load the teacher with the same blocks and timesteps "
                f"(teacher hash {self.meta.get('teacher_hash', '?')})"
            )
        for name, ch, _ in self.spec:
            x = features[name]
            if x.ndim != 4 or int(x.shape[1]) != ch:
                raise ModelError(f"feature {name!r} has shape {tuple(x.shape)}, the head expects (B, {ch}, h, w)")

    @torch.no_grad()
    def predict(self, features: Mapping[str, torch.Tensor],
                size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and a per-pixel uncertainty.

        Args:
            features: ``{name: (B, C_l, h_l, w_l)}`` teacher maps as in :attr:`spec`.
            size: output ``(H, W)``; default the image size the features came from.

        Returns:
            ``probs (B, C, H, W)`` float32, non-negative, summing to 1 over C; ``uncertainty
            (B, H, W)`` float32 >= 0, in nats (see :attr:`uncertainty_kind`).
        """
        self.check_features(features)
        hw = (int(size[0]), int(size[1])) if size is not None else self.image_size(features)
        was_training = self.training
        self.eval()
        try:
            return self._predict(features, hw)
        finally:
            self.train(was_training)

    def describe(self) -> dict[str, Any]:
        """The descriptor fields that rebuild this module: kind, kwargs, num_classes, feature spec."""
        return {"kind": self.kind, "kwargs": dict(self.kwargs), "num_classes": self.num_classes,
                "feature_spec": self.spec.to_dict(), "uncertainty": self.uncertainty_kind}

    def save(self, folder: str | Path, *, teacher_hash: str | None = None, class_names: Sequence[str] | None = None,
             label_ids: Sequence[str] | None = None, **extra: Any) -> Path:
        """Write ``folder/head.safetensors`` and ``folder/head.json`` (the folder is replaced atomically).

        ``extra`` adds JSON-able descriptor fields (e.g. the teacher's ``describe()``, the data set).
        """
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a head with {self.num_classes} classes")
        desc = {
            **self.describe(),
            "teacher_hash": teacher_hash,
            "class_names": list(class_names) if class_names is not None else None,
            "label_ids": list(label_ids) if label_ids is not None else None,
            "parameters": sum(p.numel() for p in self.parameters()),
            **extra,
        }
        return HEAD_FILES.save(folder, self.state_dict(), desc, metadata={"kind": self.kind})


def read_descriptor(folder: Path) -> dict[str, Any]:
    """``head.json`` of a head folder, checked; raises ``ModelError`` naming the file."""
    return HEAD_FILES.read(folder, required=("kind", "kwargs", "num_classes", "feature_spec"))
