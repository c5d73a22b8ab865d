"""How to train: :class:`OptimConfig` (every training section's ``optim`` sub-section) and
:class:`LoopConfig` (it plus what the task decides: steps, evaluation, checkpoints, budget, seed).

Their own module, below the loop, the optimiser groups and the schedule that all read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dtlabel.errors import ConfigError


@dataclass
class OptimConfig:
    """The optimiser and its lr schedule: the ``optim`` sub-section of every training section
    (``fit.optim``, ``head.optim``, ``student.optim``, ``pretrain.optim``), the same names everywhere.

    ``lr`` and ``weight_decay`` may be null where the task has its own default (a head's kind)."""

    lr: float | None = 1e-3
    weight_decay: float | None = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0          # max global gradient norm (0: off)
    norm_bias_decay: bool = False   # true: weight decay on norm and bias parameters too (the rule before the groups)
    encoder_lr_mult: float = 1.0    # lr of the task's "encoder" group / lr (a pretrained backbone under a new decoder)
    schedule: str = "auto"          # steps: the cosine spans `steps` | budget: it also ends when `max_minutes` does |
                                    # auto: budget when max_minutes is set (a time-bound run anneals), else steps


@dataclass
class LoopConfig(OptimConfig):
    """How to train: a section's :class:`OptimConfig` plus what the task decides (steps, evaluation,
    checkpoints, the run's budget and seed). ``LoopConfig.of(optim, steps=..., ...)`` builds one."""

    steps: int = 0
    amp: str = "auto"
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0            # steps between evaluations (0: only at the end, if the task evaluates)
    select: str = "last"           # best (on select_metric, higher is better) | last
    select_metric: str = "val_miou"
    checkpoint_every: int = 0      # steps between checkpoints (0: only at the end and at a stop)
    keep_last: int = 2
    keep_every: int = 0
    max_minutes: float | None = None
    loss_smoothing: float = 0.9    # weight of the running mean shown in the bar and logged as loss_ema
    allow_new_total: bool = False  # resume with another number of steps (the schedule stretches)
    schedule_auto: bool = field(default=False, init=False)  # schedule was "auto": a resumed run keeps its own

    @classmethod
    def of(cls, optim: OptimConfig, **task: Any) -> LoopConfig:
        """The loop settings of ``optim`` with the task's own fields (``steps``, ``lr`` where the
        section leaves it null, ...) laid over it."""
        values = {f.name: getattr(optim, f.name) for f in fields(OptimConfig)}
        return cls(**{**values, **task})

    def __post_init__(self) -> None:
        if self.lr is None or self.weight_decay is None:
            raise ConfigError("the task must give lr and weight_decay where its section leaves them null")
        if int(self.steps) < 1:
            raise ConfigError(f"the number of training steps must be >= 1, got {self.steps}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select={self.select}: expected best or last")
        if self.max_minutes is not None and float(self.max_minutes) < 0:
            raise ConfigError(f"max_minutes={self.max_minutes} must be >= 0 or null")
        if self.schedule not in ("auto", "steps", "budget"):
            raise ConfigError(f"schedule={self.schedule}: expected auto, steps or budget")
        if self.schedule == "auto":
            self.schedule_auto = True
            self.schedule = "budget" if self.max_minutes else "steps"
        if self.schedule == "budget" and not self.max_minutes:
            raise ConfigError("schedule=budget needs max_minutes > 0: the lr schedule ends with the time budget")
        if not float(self.encoder_lr_mult) > 0:
            raise ConfigError(f"encoder_lr_mult={self.encoder_lr_mult} must be > 0")
        for name in ("log_every", "keep_last"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
