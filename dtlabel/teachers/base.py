"""The teacher interface: a frozen model, loaded from a folder, that turns images into named feature maps.

A teacher is whatever a few-label head reads: ``features(images, seed)`` returns multi-scale maps
``{name: (B, C, H / stride, W / stride)}`` described by a :class:`~dtlabel.features.FeatureSpec`.
How the maps are made is the family's business: :class:`~dtlabel.teachers.diffusion.DiffusionTeacher`
noises the image and reads UNet decoder blocks (DreamTeacher, docs/METHOD.md §2); a GAN-generator family
would invert the image and read generator blocks. A new family is one file: subclass
:class:`Teacher`, implement the abstract members, decorate it with ``@register_teacher("name")``.

Families that can draw images (``can_sample``) implement :meth:`Teacher.sample`; the others raise a
``ConfigError`` that says so, so commands that need samples fail at the start.
"""

from __future__ import annotations

import inspect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dtlabel.errors import ConfigError
from dtlabel.features import FeatureSpec
from dtlabel.registry import Registry
from dtlabel.saving import RecordsConfig
from dtlabel.teachers.loading import hash_model_folder, resolve_model_root

__all__ = ["TEACHERS", "SampleOutput", "Teacher", "register_teacher"]

#: Teacher families by name. Built-ins and plug-ins register the same way, with :func:`register_teacher`.
TEACHERS: Registry[type[Teacher]] = Registry("teacher family", attribute="family", also=("auto",))


def register_teacher(name: str) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator adding a :class:`Teacher` subclass to :data:`TEACHERS` as family ``name``.

    Sets the class's ``family`` to ``name``; ``ValueError`` if another class has that name.
    """
    return TEACHERS.register(name)


@dataclass
class SampleOutput:
    """Result of :meth:`Teacher.sample`.

    ``images``: ``(n, 3, H, W)`` float32 in [-1, 1]. ``features``: maps named as in
    :attr:`Teacher.feature_spec`, each ``(n, C, H / stride, W / stride)`` float32, or ``None``.
    ``seeds``: the seed of each sample (``seed + i``).
    """

    images: torch.Tensor
    features: dict[str, torch.Tensor] | None
    seeds: list[int]


class Teacher(RecordsConfig, torch.nn.Module, ABC):
    """A frozen feature extractor loaded from a model folder (and, for some families, a sampler).

    Subclasses load their folder in ``__init__`` (after ``super().__init__(path)``; the options of
    every constructor are recorded in :attr:`kwargs` by :class:`dtlabel.saving.RecordsConfig`, and
    ``self.record(name=value)`` stores a normalised value), and implement :meth:`features`,
    :attr:`feature_spec`, :attr:`image_size` and :meth:`check_image_size`.

    Attributes: ``path`` (as given), ``root`` (the model folder, see ``resolve_model_root``),
    ``kwargs`` (constructor options, JSON-able, saved by :meth:`describe`).
    """

    #: registry name, set by :func:`register_teacher`
    family: ClassVar[str] = ""
    #: True if :meth:`sample` draws images
    can_sample: ClassVar[bool] = False
    #: ``detect_family`` asks families with a higher priority first (give a special case of another
    #: family a higher one); equal priorities keep the registration order
    detect_priority: ClassVar[int] = 0
    #: what :meth:`matches` looks for, for the "no teacher model" message
    folder_hint: ClassVar[str] = ""
    #: the options of every constructor up the family's classes are recorded (dtlabel.saving)
    built_from: ClassVar[tuple[str, ...]] = ("path",)
    record_inherited: ClassVar[bool] = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.root = resolve_model_root(path)
        self.__dict__.setdefault("kwargs", {})  # the constructors' options, recorded (dtlabel.saving)
        self._hash: str | None = None

    # ------------------------------------------------------------------ what a family implements
    @classmethod
    def matches(cls, root: Path) -> bool:
        """True if the model folder ``root`` holds a model of this family (for ``load_teacher``)."""
        return False

    @abstractmethod
    def features(self, images: torch.Tensor, seed: int | Sequence[int] = 0, **options: Any) -> dict[str, torch.Tensor]:
        """Multi-scale features of real images.

        Args:
            images: ``(B, 3, H, W)`` float in [-1, 1]; ``H, W`` as allowed by :meth:`check_image_size`.
            seed: an int (one CPU generator for the batch) or one seed per image (then each image's
                features do not depend on the rest of the batch); ignored by deterministic families.
            options: family-specific reading options (a diffusion teacher takes ``timesteps`` and
                ``noise_draws``); :meth:`spec_for` with the same options describes the result.

        Returns:
            ``{name: (B, C, H / stride, W / stride) float32}`` on :attr:`device`, named and ordered
            as ``spec_for(**options)``, at native resolution (heads upsample).
        """

    @property
    @abstractmethod
    def feature_spec(self) -> FeatureSpec:
        """Names, channels and strides of :meth:`features` with the configured options."""

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]:
        """Default image size ``(H, W)`` in pixels (the size the model was trained at)."""

    @abstractmethod
    def check_image_size(self, height: int, width: int) -> None:
        """Raise ``ConfigError`` if ``(height, width)`` images cannot be used with this teacher."""

    @property
    def reads_images(self) -> bool:
        """True if :meth:`features` reads real images (a GAN without its inversion encoder does not)."""
        return True

    def spec_for(self, **options: Any) -> FeatureSpec:
        """Spec of :meth:`features` called with ``options`` (families without options: :attr:`feature_spec`)."""
        if options:
            raise ConfigError(f"teacher family {self.family!r} takes no feature options, got {sorted(options)}")
        return self.feature_spec

    def sample(self, n: int, seed: int = 0, **options: Any) -> SampleOutput:
        """Draw ``n`` images (sample ``i`` from seed ``seed + i``) and their features; see ``can_sample``."""
        able = [name for name, cls in TEACHERS.items() if cls.can_sample]
        raise ConfigError(
            f"teacher family {self.family!r} cannot sample images; use a family that can ({', '.join(able)}) "
            "or label real images instead"
        )

    # ------------------------------------------------------------------ shared
    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Keyword options of the constructor (of every class up to :class:`Teacher`), for configs."""
        names: list[str] = []
        for klass in cls.__mro__:
            if klass is Teacher or not issubclass(klass, Teacher) or "__init__" not in klass.__dict__:
                continue
            for p in inspect.signature(klass.__dict__["__init__"]).parameters.values():
                skip = p.name in ("self", "path") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                if not skip and p.name not in names:
                    names.append(p.name)
        return tuple(names)

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def teacher_hash(self) -> str:
        """Short stable hash of the model folder's weights and configs (see :func:`hash_model_folder`)."""
        if self._hash is None:
            self._hash = hash_model_folder(self.root)
        return self._hash

    def describe(self) -> dict[str, Any]:
        """JSON-able record for run descriptors: family + kwargs (to recreate it), hash, spec, classes."""
        return {
            "family": self.family,
            "path": str(self.path),
            "kwargs": dict(self.kwargs),
            "teacher_hash": self.teacher_hash(),
            "feature_spec": self.feature_spec.to_dict(),
            "image_size": list(self.image_size),
            "classes": {name: type(m).__name__ for name, m in self.named_children()},
        }

    def train(self, mode: bool = True) -> Teacher:
        """Teachers are frozen: stay in eval mode (no dropout) whatever ``mode`` is."""
        return super().train(False)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` checked (shape, dtype, size, range) and moved to :attr:`device` as float32."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got dtype {images.dtype}; use x / 127.5 - 1")
        self.check_image_size(int(images.shape[2]), int(images.shape[3]))
        images = images.to(self.device, torch.float32)
        lo, hi = torch.stack(torch.aminmax(images)).tolist()  # one device sync
        if lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; map uint8 with x / 127.5 - 1"
            )
        return images

    def extra_repr(self) -> str:
        return f"family={self.family!r}, root={str(self.root)!r}"
