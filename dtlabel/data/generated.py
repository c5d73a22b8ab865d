"""The embedded default data set as sources: scenes rendered on demand from seeds (no files)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtlabel import seeds
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.default import CLASS_NAMES, render_scene

# Seed offsets keep the pools disjoint: sample "u00012" of seed s is scene s*10**7 + 12, etc.
_OFFSETS = {"u": 0, "l": 3_000_000, "t": 6_000_000}


class GeneratedSource(LabeledSource):
    """Scenes with ids like ``u00012`` (unlabeled pool), ``l00003`` (labeled pool), ``t00007`` (test)."""

    def __init__(self, seed: int, counts: dict[str, int], size: Sequence[int], style: str = "photo") -> None:
        self.seed = int(seed)
        self.style = style
        self.size = (int(size[0]), int(size[1]))
        self.class_names = list(CLASS_NAMES)
        self.ignore_index = 255
        self._ids = [f"{p}{i:05d}" for p in ("u", "l", "t") for i in range(int(counts.get(p, 0)))]
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _scene_seed(self, id_: str) -> int:
        return seeds.scene(self.seed, _OFFSETS[id_[0]], int(id_[1:]))

    def _render(self, id_: str) -> tuple[np.ndarray, np.ndarray]:
        if id_ not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[id_] = render_scene(self._scene_seed(id_), self.size, self.style)
        return self._cache[id_]

    def describe(self, id_: str) -> str:
        return f"default/{id_} (scene seed {self._scene_seed(id_)})"

    def image(self, id_: str) -> np.ndarray:
        return self._render(id_)[0].copy()

    def mask(self, id_: str) -> np.ndarray:
        return self._render(id_)[1].copy()


def build_default(seed: int, n_unlabeled: int, n_labeled: int, n_val: int, n_test: int,
                  size: Sequence[int], style: str = "photo") -> DataBundle:
    """The default data set: an unlabeled pool, a labeled pool (train + val) and a test split."""
    labeled = GeneratedSource(seed, {"l": n_labeled + n_val, "t": n_test}, size, style)
    unlabeled = GeneratedSource(seed, {"u": n_unlabeled}, size, style)
    pool = [i for i in labeled.ids if i.startswith("l")]
    return DataBundle(
        name="default",
        labeled=labeled,
        unlabeled=unlabeled,
        splits={"train": pool[:n_labeled], "val": pool[n_labeled:], "test": [i for i in labeled.ids if i.startswith("t")]},
    )
