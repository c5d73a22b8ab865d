"""Deterministic training streams: which samples step ``s`` sees, and with which augmentation.

The stream of a training set of ``n`` items is the endless concatenation of seeded permutations
(pass ``e`` is ``randperm(n)`` seeded ``seeds.permutation(seed, e)``); step ``s`` of a global batch
``B`` takes stream positions ``[s * B, (s + 1) * B)``, and process ``rank`` of ``world`` takes every
``world``-th of them. So the batches of a step depend on nothing but ``(seed, s)``: a run resumed at
any step sees exactly the batches an uninterrupted run sees, with any number of loader workers.
Each item carries its stream position, which seeds its augmentation (:class:`PositionedDataset`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from dtlabel import seeds


class IndexStream(Sampler[list[tuple[int, int]]]):
    """Batch sampler of ``(position, index)`` pairs for steps ``start, ..., steps - 1``."""

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, steps: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ValueError("an index stream needs at least one item")
        self.n, self.batch, self.seed, self.start, self.steps = int(n), int(batch), int(seed), int(start), steps
        self.rank, self.world = int(rank), int(world)
        self._perm: tuple[int, torch.Tensor] | None = None

    def pass_of(self, position: int) -> int:
        """Which pass over the items stream ``position`` belongs to (an 'epoch')."""
        return int(position) // self.n

    def _index(self, position: int) -> int:
        e = position // self.n
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, torch.randperm(self.n, generator=torch.Generator().manual_seed(seeds.permutation(self.seed, e))))
        return int(self._perm[1][position % self.n])

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(position, index)`` pairs of step ``step``."""
        positions = range(step * self.batch, (step + 1) * self.batch)
        return [(p, self._index(p)) for p in positions][self.rank::self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.start
        while self.steps is None or s < self.steps:
            yield self.batch_at(s)
            s += 1

    def __len__(self) -> int:
        return max(0, int(self.steps) - self.start) if self.steps is not None else 2**31


class PositionedDataset(Dataset):
    """Wraps a dataset whose ``transform`` is an albumentations ``Compose``: item ``(position, index)``
    reseeds the transform with ``seeds.sample(seed, position)`` and returns
    ``(position, index, *dataset[index])``,
    so an augmentation depends on the stream position alone (the noise seeds of the teacher follow
    the index, the augmentation the position)."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, ...]:
        position, index = item
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seeds.sample(self.seed, position))
        out = self.dataset[index]
        return (position, index, *out) if isinstance(out, tuple) else (position, index, out)
