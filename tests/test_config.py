"""Every primary config composes with every preset and every data set config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dtlabel.config import compose, config_dir, group_options
from dtlabel.errors import ConfigError

COMMANDS = sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem != "base")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("preset", group_options("preset"))
def test_compose_every_command_and_preset(command: str, preset: str) -> None:
    cfg = compose(command, [f"preset={preset}"])
    assert cfg.preset == preset
    assert cfg.seed == 0 and cfg.device == "auto"
    OmegaConf.to_yaml(cfg, resolve=True)


@pytest.mark.parametrize("data", group_options("data"))
def test_compose_every_data_config(data: str) -> None:
    cfg = compose("data_check", [f"data={data}"])
    assert cfg.data.kind in ("folder", "images", "default", "coco")
    assert len(cfg.data.size) == 2


def test_preset_tiny_sets_command_section() -> None:
    tiny = compose("fit_teacher", ["preset=tiny"])
    cpu = compose("fit_teacher", ["preset=cpu"])
    assert tiny.fit.steps < cpu.fit.steps
    assert tiny.data.size == [32, 32]


def test_user_override_beats_preset() -> None:
    cfg = compose("fit_teacher", ["preset=tiny", "fit.steps=5", "data.size=[16,16]"])
    assert cfg.fit.steps == 5 and list(cfg.data.size) == [16, 16]


def test_ccp_protocol_config() -> None:
    cfg = compose("data_check", ["data=ccp"])
    assert cfg.data.splits.train == "0001-0804" and cfg.data.splits.test == "0805-1004"
    assert cfg.data.masks == "labeled/masks_coarse8" and cfg.data.classes_key == "coarse_classes"


def test_unknown_nested_key_lists_siblings() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'fit.stepz'.*fit.steps"):
        compose("fit_teacher", ["fit.stepz=3"])


def test_pretrain_steps_null_plans_from_epochs_where_the_preset_sets_steps() -> None:
    cpu = compose("pretrain", ["preset=cpu"])
    assert cpu.pretrain.steps == 1000 and cpu.pretrain.optim.warmup_steps == 60  # the best measured CCP configuration
    assert compose("pretrain", ["preset=cpu", "pretrain.steps=null"]).pretrain.steps is None  # epochs decide
    with pytest.raises(ConfigError, match="fit.steps=null: expected a whole number"):  # no epochs to fall back on
        compose("fit_teacher", ["preset=cpu", "fit.steps=null"])
