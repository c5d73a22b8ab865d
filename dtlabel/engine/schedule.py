"""The learning-rate schedule of every training command: linear warm-up, then cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable


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
