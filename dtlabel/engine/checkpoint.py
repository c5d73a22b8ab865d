"""One checkpoint format for every training command: atomic step folders.

``<run>/checkpoints/step_0000400/`` holds one ``<name>.safetensors`` per set of tensors (the model,
an EMA copy, the best model so far ...) and ``state.pt``: the optimiser, the lr schedule, the grad
scaler, the engine's counters and the task's small state, written with ``torch.save`` and read with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only: no pickled objects). A folder
is renamed into place only once complete, so a kill at any moment leaves the previous checkpoint
usable. Keep policy: the last ``keep_last`` folders, plus every multiple of ``keep_every`` for good.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dtlabel.errors import RunError
from dtlabel.io import atomic_dir, save_tensors

STATE = "state.pt"
_PREFIX = "step_"


def step_name(step: int) -> str:
    return f"{_PREFIX}{int(step):07d}"


class CheckpointStore:
    """The checkpoints of one run folder (``folder`` is ``<run>/checkpoints``)."""

    def __init__(self, folder: str | Path, keep_last: int = 2, keep_every: int = 0) -> None:
        self.folder = Path(folder)
        self.keep_last = max(1, int(keep_last))
        self.keep_every = int(keep_every or 0)

    def folders(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE).is_file())

    def steps(self) -> list[int]:
        return [int(p.name[len(_PREFIX):]) for p in self.folders()]

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> Path:
        """Write checkpoint ``step`` (replacing one of the same step), then apply the keep policy."""
        target = self.folder / step_name(step)
        with atomic_dir(target) as tmp:
            for name, group in tensors.items():
                save_tensors({k: v.detach().contiguous().cpu() for k, v in group.items()}, tmp / f"{name}.safetensors")
            torch.save({"step": int(step), **state}, tmp / STATE)
        self._prune()
        return target

    def load(self, step: int | None = None, device: str | torch.device = "cpu") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """``(tensors by name, state)`` of checkpoint ``step`` (default the latest)."""
        step = self.latest() if step is None else int(step)
        folder = self.folder / step_name(step) if step is not None else None
        if folder is None or not (folder / STATE).is_file():
            have = ", ".join(map(str, self.steps())) or "none"
            raise RunError(f"{self.folder}: no complete checkpoint at step {step} (have: {have})")
        try:
            state = torch.load(folder / STATE, map_location=device, weights_only=True)
            tensors = {p.name[: -len(".safetensors")]: load_file(str(p), device=str(device))
                       for p in sorted(folder.glob("*.safetensors"))}
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind is one line
            raise RunError(f"{folder}: the checkpoint cannot be read ({type(exc).__name__}); delete the folder "
                           "to resume from the previous one") from None
        return tensors, state

    def _prune(self) -> None:
        folders = self.folders()
        for old in folders[: -self.keep_last]:
            step = int(old.name[len(_PREFIX):])
            if self.keep_every and step % self.keep_every == 0:
                continue  # kept for good (e.g. teacher feature quality against training time)
            shutil.rmtree(old, ignore_errors=True)
