"""The optimiser's parameter groups: which parameters decay and at what learning rate each group trains.

A task names groups of its trainable parameters (:meth:`Task.parameter_groups`, default one group,
``"model"``); the engine splits each into the parameters that take weight decay and those that do
not, and scales a group's lr by its multiplier (``LoopConfig.encoder_lr_mult`` for the group named
``"encoder"``). What does not decay, as timm and the transformer recipes do: every parameter with
at most one dimension (biases, the scales and shifts of normalisation layers) and the names a
model lists in ``no_weight_decay()`` (position embeddings of timm ViTs). Decay on a norm's scale
pulls it towards 0, which is a change of the layer's output scale, not a regulariser.

``LoopConfig.norm_bias_decay=true`` puts decay back on them. Checkpoints record the groups' names
(``param_groups``), so a run resumes with the grouping it started with: one written before the
groups existed resumes as one group with decay on every parameter (its bytes stay those of an
uninterrupted run of that version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dtlabel.errors import ConfigError, RunError

if TYPE_CHECKING:
    from dtlabel.engine.config import LoopConfig
    from dtlabel.engine.task import Task

LEGACY = ["all"]  # the groups of a checkpoint that records none: one group, decay on every parameter


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    """Full parameter names the model (or any submodule) exempts through ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            try:
                for name in listed():
                    names.add(f"{prefix}.{name}" if prefix else str(name))
            except TypeError:  # a method of another meaning
                continue
    return names


def build_groups(model: torch.nn.Module, named: Mapping[str, Sequence[torch.nn.Parameter]], lr: float,
                 weight_decay: float, lr_mults: Mapping[str, float], norm_bias_decay: bool = False,
                 legacy: bool = False) -> list[dict[str, Any]]:
    """The optimiser's ``param_groups``: for each named group (in order) its decaying parameters and
    its non-decaying ones (``<name>.no_decay``), each with ``lr = lr * lr_mults.get(name, 1)``.

    ``norm_bias_decay``: every parameter decays (the named groups stay, for their lr).
    ``legacy``: the single group of the runs from before the groups (every parameter decays, one lr).
    Empty groups are dropped. Each group carries ``name`` for logs, checkpoints and checks.
    """
    if legacy:
        params = [p for ps in named.values() for p in ps]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": LEGACY[0]}]
    exempt_names = set() if norm_bias_decay else _no_decay_names(model)
    exempt = set() if norm_bias_decay else {id(p) for n, p in model.named_parameters()
                                            if p.ndim <= 1 or n in exempt_names}
    groups = []
    for name, params in named.items():
        scaled = lr * float(lr_mults.get(name, 1.0))
        decay = [p for p in params if id(p) not in exempt]
        keep = [p for p in params if id(p) in exempt]
        for suffix, ps, wd in (("", decay, weight_decay), (".no_decay", keep, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": scaled, "weight_decay": wd, "name": name + suffix})
    return groups


def check_groups(named: Mapping[str, Sequence[torch.nn.Parameter]], trainable: Iterable[torch.nn.Parameter]) -> None:
    """Every trainable parameter in exactly one named group (a task's grouping bug, not a user's)."""
    seen: dict[int, str] = {}
    for name, params in named.items():
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter is in groups {seen[id(p)]} and {name}")
            seen[id(p)] = name
    missing = sum(1 for p in trainable if id(p) not in seen)
    if missing:
        raise ValueError(f"{missing} trainable parameters are in no group")


def adamw(groups: list[dict[str, Any]], betas: Sequence[float]) -> torch.optim.AdamW:
    """AdamW over ``groups`` (their lr and weight decay set per group)."""
    torch_groups = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    return torch.optim.AdamW(torch_groups, betas=(float(betas[0]), float(betas[1])))


def task_groups(task: Task, cfg: LoopConfig, saved: list[str] | None, run_dir: Path) -> list[dict[str, Any]]:
    """The optimiser's groups of ``task`` under ``cfg``; a resumed run keeps the ones its checkpoint
    records (``saved``; :data:`LEGACY` for checkpoints from before the groups, None for a new run), so
    it ends with an uninterrupted run's bytes."""
    named = task.parameter_groups()
    check_groups(named, (p for p in task.model.parameters() if p.requires_grad))
    prefix = f"{task.config_prefix}." if task.config_prefix else ""
    if cfg.encoder_lr_mult != 1.0 and "encoder" not in named:
        raise ConfigError(f"{prefix}encoder_lr_mult={cfg.encoder_lr_mult}: {task.name} has no encoder group "
                          f"(its groups: {', '.join(named)}); leave it at 1")
    legacy = saved == LEGACY
    if legacy and cfg.encoder_lr_mult != 1.0:
        raise RunError(f"--resume: {run_dir} was trained with one parameter group (before encoder_lr_mult); "
                       f"resume with {prefix}encoder_lr_mult=1")
    groups = build_groups(task.model, named, float(cfg.lr), float(cfg.weight_decay), {"encoder": float(cfg.encoder_lr_mult)},
                          bool(cfg.norm_bias_decay), legacy)
    names = [g["name"] for g in groups]
    if saved is not None and saved != names:
        raise RunError(f"--resume: {run_dir} was trained with the parameter groups {', '.join(saved)}, the config "
                       f"now gives {', '.join(names)}; resume with the same {prefix}norm_bias_decay")
    return groups
