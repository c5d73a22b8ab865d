"""The data-source interface every data set implements (folders, COCO, the generated default).

A *source* is an indexable collection of samples named by string ids. Pixels come out as numpy
arrays: images ``(H, W, 3) uint8 RGB``, masks ``(H, W)`` integer class ids (``ignore_index`` marks
unlabeled pixels). Sources do no resizing or augmentation; ``dtlabel.data.transforms`` does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ImageSource(ABC):
    """Images without labels, addressed by id."""

    @property
    @abstractmethod
    def ids(self) -> list[str]:
        """All sample ids, in a stable (sorted) order."""

    @abstractmethod
    def image(self, id_: str) -> np.ndarray:
        """Return image ``id_`` as ``(H, W, 3) uint8`` RGB. Raises ``DataError`` if unreadable."""

    def describe(self, id_: str) -> str:
        """Where sample ``id_`` comes from (a file path for folders), for error messages."""
        return id_

    def file(self, id_: str) -> Path | None:
        """The image file of ``id_`` where there is one (folders), else None. Its sha256 is how a
        pseudo-labeled copy of a validation or test image is recognised, whatever its path."""
        return None

    def __len__(self) -> int:
        return len(self.ids)


class LabeledSource(ImageSource):
    """Images with semantic masks."""

    class_names: list[str]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def problems(self) -> list[str]:
        """Problems found while indexing (e.g. images without masks), reported by ``data check``."""
        return []

    @abstractmethod
    def mask(self, id_: str) -> np.ndarray:
        """Return mask ``id_`` as ``(H, W)`` integer class ids (uint8, int32 or int64)."""

    def describe_mask(self, id_: str) -> str:
        """Where mask ``id_`` comes from (its file where it has one), for error messages about its values."""
        path = getattr(self, "mask_path", None)
        try:
            return str(path(id_)) if callable(path) else f"the mask of {self.describe(id_)}"
        except KeyError:
            return f"the mask of {self.describe(id_)}"


@dataclass
class DataBundle:
    """Everything a command needs from one data set.

    ``labeled`` holds every labeled sample; ``splits`` maps a split name (``train``, ``val``,
    ``test``) to a list of ids of ``labeled``. ``unlabeled`` is the pool for teachers and
    pseudo-labels (may be ``None``).
    """

    name: str
    labeled: LabeledSource | None
    unlabeled: ImageSource | None
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.labeled.class_names if self.labeled is not None else []

    @property
    def ignore_index(self) -> int:
        return self.labeled.ignore_index if self.labeled is not None else 255
