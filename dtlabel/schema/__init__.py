"""Typed configs: one dataclass schema per config section, checked when a command's config is composed.

Hydra composes the YAML (``dtlabel/configs/``: presets, data sets, the user's ``key=value``); then
:func:`check_command` checks the result against :data:`COMMANDS` (types, choices, ranges; one
:class:`ConfigError` line naming the key) and :func:`section` turns a section into its dataclass
for the code that reads it (``section(cfg.student.optim, Optim)``). Keys renamed since earlier
versions are refused with their new name (:data:`RENAMED`, also listed in the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from dtlabel.errors import ConfigError, did_you_mean
from dtlabel.schema.check import Size, build, validate
from dtlabel.schema.commands import COMMANDS, DATA_KINDS
from dtlabel.schema.sections import (DemoSection, FitSection, HeadSection, Optim, PretrainSection, StudentSection,
                                     SynthSection, TeacherSection)

_OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "grad_clip", "schedule")

# old key -> new key (one name per concept across sections)
RENAMED: dict[str, str] = {
    **{f"{s}.{k}": f"{s}.optim.{k}" for s in ("fit", "head", "student", "pretrain") for k in _OPTIM_KEYS},
    "fit.keep_checkpoints": "fit.keep_last",
    "pretrain.keep_checkpoints": "pretrain.keep_last",
    "pretrain.base_lr": "pretrain.optim.lr",
    # the presets' Unet arguments moved to the per-architecture decoders (student.kwargs: the user's extras)
    "student.kwargs.encoder_depth": "student.decoders.Unet.encoder_depth",
    "student.kwargs.decoder_channels": "student.decoders.Unet.decoder_channels",
}
_RENAME_NOTES = {"pretrain.base_lr": " (the lr itself now, no longer scaled by batch_size / 256: "
                                     "base_lr 1.6e-2 at batch 16 is optim.lr=1e-3)"}


def renamed(key: str) -> str | None:
    """The one-line hint for a key of an earlier version, or None."""
    key = key.lstrip("+~")
    new = RENAMED.get(key)
    if new is None:
        return None
    return f"'{key}' is now '{new}'{_RENAME_NOTES.get(key, '')}; see the README, 'Typed configs'"


def check_command(command: str, cfg: DictConfig, given: Mapping[str, str] | None = None,
                  defaults: DictConfig | None = None) -> None:
    """Check a composed config of ``command`` (``train-head`` or ``train_head``) against its schema."""
    schema = COMMANDS.get(command.replace("-", "_"))
    if schema is None:
        return
    validate(cfg, schema, "", given, defaults)
    data = cfg.get("data")
    if isinstance(data, DictConfig) and "kind" in data:  # commands without a data set hold only the preset's size
        kind = str(data.kind)
        if kind not in DATA_KINDS:
            raise ConfigError(f"data.kind={kind}: expected one of {', '.join(DATA_KINDS)}{did_you_mean(kind, list(DATA_KINDS))}")
        validate(data, DATA_KINDS[kind], "data.", given, defaults)


def section(node: Any, schema: type) -> Any:
    """The dataclass of a checked config section (ints as floats where floats are declared)."""
    return build(node, schema)


__all__ = ["COMMANDS", "DATA_KINDS", "RENAMED", "DemoSection", "FitSection", "HeadSection", "Optim",
           "PretrainSection", "Size", "StudentSection", "SynthSection", "TeacherSection", "check_command",
           "renamed", "section"]
