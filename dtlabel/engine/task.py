"""What the engine trains: a task owns its model, its data stream, its objective and its evaluation.

A task says nothing about optimisers, schedules, precision, processes, checkpoints or logging; the
engine (:func:`dtlabel.engine.train`) does those the same way for every command. The contract:

- ``model``: the trainable ``nn.Module`` (the engine optimises its parameters that require grad,
  wraps it in DDP under torchrun and checkpoints its ``state_dict`` as ``<model_key>.safetensors``).
- ``batches(start_step)``: the batches of steps ``start_step, start_step + 1, ...``, the same ones
  whether the run started at 0 or resumed at ``start_step`` (derive all randomness from
  :mod:`dtlabel.seeds` positions, never from a generator carried across steps).
- ``training_step(model, batch, step) -> {"loss": tensor, ...}``: named losses of one (micro-)batch;
  ``model`` is the possibly DDP-wrapped module to call. ``"loss"`` is what is minimised.
- ``parameter_groups()``: optional ``{name: parameters}`` of the trainable parameters (default one
  group, ``"model"``); the group named ``"encoder"`` trains at ``LoopConfig.encoder_lr_mult`` x lr.
  Norm and bias parameters of every group take no weight decay (:mod:`dtlabel.engine.optim`).
- ``micro_batches(batch, step)``: optional split of a batch into ``(part, weight)`` pairs whose
  gradients accumulate (weights sum to 1), bounding activation memory.
- ``after_step(step)``: optional, e.g. an EMA update.
- ``evaluate(step) -> dict | None``: optional validation metrics, every ``eval_every`` steps and
  at the end; the engine selects on ``LoopConfig.select_metric`` and logs every key.
- ``checkpoint_tensors() / checkpoint_state()`` and ``load_checkpoint(tensors, state)``: extra state
  that must survive a resume (EMA weights, counters); tensors go to safetensors, the state must be
  plain numbers, strings, lists and dicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch


class Task(ABC):
    """Base class of the training tasks (fit-teacher, train-head, train-student, pretrain)."""

    name: str = "train"               # shown in the progress bar and in messages
    config_prefix: str = ""           # the config section, for hints ("lower head.lr")
    model_key: str = "model"          # file name of the model's weights in a checkpoint
    find_unused_parameters: bool = False
    images_per_step: int = 0          # global images per step, for the images/s figure (0: not shown)
    model: torch.nn.Module

    @abstractmethod
    def batches(self, start_step: int) -> Iterator[Any]:
        """Batches of steps ``start_step, start_step + 1, ...`` (identical on resume)."""

    @abstractmethod
    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Named losses of one batch; ``"loss"`` (a scalar with grad) is minimised."""

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters by group name (the first group's lr is the one logged)."""
        return {"model": [p for p in self.model.parameters() if p.requires_grad]}

    def micro_batches(self, batch: Any, step: int) -> Sequence[tuple[Any, float]]:
        return [(batch, 1.0)]

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (``step`` = steps done so far minus one)."""

    def evaluate(self, step: int) -> dict[str, Any] | None:
        return None

    def log_fields(self, step: int) -> dict[str, Any]:
        """Extra fields of the training lines of ``metrics.jsonl`` (e.g. the epoch)."""
        return {}

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        return {}

    def load_checkpoint(self, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_tensors` / :meth:`checkpoint_state` saved."""
