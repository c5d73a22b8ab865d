"""Configuration: Hydra's compose API over the YAML files shipped in the package (``dtlabel/configs/``).

Each command has a primary config ``configs/<command>.yaml``. Its defaults list selects a data set
(``data=<name>``), a preset (``preset=tiny|cpu|gpu``) and the command's own preset section, so that
``--preset tiny`` switches every size at once. User overrides (``key=value``) come last. Unknown
keys and group options are turned into one-line :class:`ConfigError` messages with close matches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from dtlabel.errors import ConfigError, did_you_mean
from dtlabel.schema import check_command, renamed

_ENV_DIR = "DTLABEL_CONFIG_DIR"


def config_dir() -> Path:
    """The folder holding the YAML configs: ``$DTLABEL_CONFIG_DIR``, else the package's ``configs/``.

    The configs are package data (found through :mod:`importlib.resources`), so a wheel installed
    anywhere carries them; Hydra reads them from a plain folder, so the package must be installed
    unzipped (what pip does).
    """
    env = os.environ.get(_ENV_DIR)
    path = Path(env) if env else Path(str(resources.files("dtlabel") / "configs"))
    if not path.is_dir():
        hint = (f"set {_ENV_DIR} to a configs folder" if env else
                "reinstall dtlabel (pip install dtlabel, unzipped) or set " + _ENV_DIR)
        raise ConfigError(f"config folder not found: {path}; {hint}")
    return path


def group_options(group: str) -> list[str]:
    """Names of the configs available in a config group (``data``, ``preset``, ...)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def groups() -> list[str]:
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir())


def _leaf_keys(cfg: object, prefix: str = "") -> Iterable[str]:
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            yield path
            yield from _leaf_keys(cfg._get_node(key), path + ".")  # type: ignore[arg-type]


_OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[A-Za-z_][\w.\-@/]*)=(?P<value>.*)$", re.S)


def _check_override_syntax(overrides: Sequence[str]) -> None:
    for ov in overrides:
        if not _OVERRIDE.match(ov):
            raise ConfigError(f"cannot parse override '{ov}': expected key=value, e.g. data.root=PATH or preset=tiny")


def compose(command: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the configuration of ``command`` with ``overrides`` (Hydra override grammar).

    Raises :class:`ConfigError` with close matches for an unknown key or group option.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    _check_override_syntax(overrides)
    name = command.replace("-", "_")
    cdir = config_dir()
    if not (cdir / f"{name}.yaml").is_file():
        raise ConfigError(f"no configuration for command '{command}' in {cdir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(cdir), version_base=None):
        try:
            cfg = hydra_compose(config_name=name, overrides=overrides)
        except MissingConfigException as exc:
            raise _group_error(exc, overrides) from None
        except HydraException as exc:
            raise _key_error(name, exc, overrides) from None
        values = [o for o in overrides if not _is_group_override(o)]
        reference = hydra_compose(config_name=name, overrides=[o for o in overrides if _is_group_override(o)]) \
            if values else None
        check_command(name, cfg, _given(values), reference)
        return cfg


def _given(overrides: Sequence[str]) -> dict[str, str]:
    """The user's value overrides by key, as typed (``{"head.epochs": "0"}``), for error messages."""
    given = {}
    for ov in overrides:
        m = _OVERRIDE.match(ov)
        if m:
            given[m.group("key")] = m.group("value")
    return given


def _is_group_override(ov: str) -> bool:
    key = ov.split("=", 1)[0].lstrip("+~")
    return "." not in key and key in groups()


def _group_error(exc: Exception, overrides: Sequence[str]) -> ConfigError:
    msg = str(exc)
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", msg)
    if m:
        group, option = m.group(1), m.group(2)
        opts = group_options(group)
        return ConfigError(
            f"unknown {group} '{option}'{did_you_mean(option, opts)}; available: {', '.join(opts)}"
        )
    return ConfigError(msg.splitlines()[0])


# sections whose keys are free arguments of another library (smp, diffusers), not dtlabel's schema
FREE_SECTIONS = ("student.kwargs", "fit.model")


def _key_error(name: str, exc: Exception, overrides: Sequence[str]) -> ConfigError:
    from hydra import compose as hydra_compose

    msg = str(exc)
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        key = m.group(1)
        hint = renamed(key)
        if hint:
            return ConfigError(hint)
        # Compose again without the user's plain key overrides to list the keys that do exist.
        groups_only = [o for o in overrides if "." not in o.split("=", 1)[0] and o.split("=", 1)[0] in groups()]
        try:
            base = hydra_compose(config_name=name, overrides=groups_only)
            known = list(_leaf_keys(base))
        except Exception:  # pragma: no cover - best effort for the hint only
            known = []
        hint = did_you_mean(key, known)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if parent in FREE_SECTIONS:  # a mapping of free arguments: new keys are added on purpose
            return ConfigError(f"'{key}' is not set yet: {parent} takes free arguments, add one with +{key}=VALUE")
        if not hint:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = [k.rsplit(".", 1)[-1] for k in known if k.startswith(parent + ".") and k.count(".") == key.count(".")]
            if siblings:
                hint = f" (keys under '{parent}': {', '.join(sorted(siblings)[:12])})"
        return ConfigError(f"unknown config key '{key}'{hint}")
    return ConfigError(" ".join(msg.split())[:300])


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def as_tuple(value: object) -> tuple:
    """A config list (or scalar) as a plain tuple."""
    if isinstance(value, (ListConfig, list, tuple)):
        return tuple(value)
    return (value,)


SEED_MAX = 2**32 - 1  # numpy's generators take seeds in [0, 2**32); torch's and dtlabel's derivations more


def check_seeds(cfg: DictConfig) -> None:
    """Every seed of the config (``seed``, ``*.label_seed``, ``synth.base_seed``) is a whole number in
    [0, 2**32 - 1]; one ``ConfigError`` naming the key otherwise, before anything is written."""
    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif key in ("seed", "label_seed", "base_seed") and value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
                    flag = "--seed" if name == "seed" else name
                    raise ConfigError(f"{flag}={value}: a seed is a whole number from 0 to {SEED_MAX}")

    # unresolved: a mandatory value not given yet (data.root=???) is the command's to report
    walk(OmegaConf.to_container(cfg, resolve=False), "")
