"""The learning-rate schedule of every training command: linear warm-up, then cosine decay; and
which schedule a resumed run follows."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dtlabel.errors import RunError

if TYPE_CHECKING:
    from dtlabel.engine.config import LoopConfig


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier of step ``step``: ``(step + 1) / warmup`` for the first ``warmup`` steps, then a
    cosine from 1 down to ``min_ratio`` at step ``total`` (and ``min_ratio`` after it)."""
    warmup, total, min_ratio = int(warmup), int(total), float(min_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def resume_schedule(cfg: LoopConfig, saved: str | None, run_dir: Path, prefix: str) -> None:
    """A resumed run keeps the lr schedule it started with: under ``schedule=auto`` the one its
    checkpoint records (``steps`` for checkpoints from before it was recorded, the default then), so
    a budget given or changed on resume does not switch it mid-run; an explicit other one is refused."""
    key = f"{prefix}.schedule" if prefix else "schedule"
    if cfg.schedule_auto:
        cfg.schedule = saved or "steps"
    elif saved is not None and saved != cfg.schedule:
        raise RunError(f"--resume: {run_dir} was trained with {key}={saved}, the config now gives {cfg.schedule}; "
                       f"resume with {key}={saved} (or {key}=auto)")
    if cfg.schedule == "budget" and not cfg.max_minutes:
        raise RunError(f"--resume: {run_dir} follows {key}=budget (its cosine ends with the time budget); resume "
                       f"with {prefix + '.' if prefix else ''}max_minutes=M")
