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
        if values:
            reference = hydra_compose(config_name=name, overrides=[o for o in overrides if _is_group_override(o)])
            check_value_types(reference, values)
        return cfg


def _is_group_override(ov: str) -> bool:
    key = ov.split("=", 1)[0].lstrip("+~")
    return "." not in key and key in groups()


# The type of keys whose default is null (``max_minutes: null`` and the like), by their last name;
# keys with a non-null default are checked against the type of that default.
NULLABLE_TYPES: dict[str, str] = {
    "max_minutes": "number", "lr": "number", "weight_decay": "number",
    "keep_every": "integer", "steps": "integer", "teacher_batch": "integer", "micro_batch": "integer",
    "label_seed": "integer", "hidden": "integer", "epoch_steps": "integer", "base_seed": "integer",
    "sample_steps": "integer", "labels": "integer", "n": "integer", "size": "size", "snr_gamma": "number",
    "unlabeled_batch_size": "integer", "pool_images": "integer",
}
# keys whose null means "off / automatic" in every preset, even where a preset sets a value
# (head.teacher_batch=null: the whole batch in one teacher pass)
NULL_MEANS_AUTO = {"teacher_batch", "micro_batch", "max_minutes", "keep_every", "epoch_steps", "label_seed", "lr",
                   "weight_decay", "hidden", "size", "snr_gamma", "pool_images",
                   "pretrain.steps"}  # a full key: null -> epochs x passes, where the cpu preset sets steps
                                      # (fit.steps has no null)


def _kind(value: object) -> str | None:
    """What a config value must stay: number, integer, boolean, size (int or [H, W]), or None (free)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (ListConfig, list)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in value):
        return "integers"
    if isinstance(value, (ListConfig, list)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              for v in value):
        return "numbers"
    return None


def _fits(value: object, kind: str) -> bool:
    def num(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    seq = isinstance(value, (ListConfig, list, tuple))
    return {
        "boolean": lambda: isinstance(value, bool),
        "integer": lambda: whole(value),
        "number": lambda: num(value),
        "integers": lambda: seq and all(whole(v) for v in value),  # type: ignore[union-attr]
        "numbers": lambda: seq and all(num(v) for v in value),  # type: ignore[union-attr]
        "size": lambda: seq and len(value) == 2 and all(whole(v) for v in value),  # type: ignore[arg-type, union-attr]
    }[kind]()


_KIND_WORDS = {"boolean": "true or false", "integer": "a whole number", "number": "a number",
               "integers": "a list of whole numbers, e.g. [64,64]", "numbers": "a list of numbers",
               "size": "[H,W], two whole numbers"}


def check_value_types(reference: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse an override whose value is not of its key's type (``fit.lr=abc``, ``fit.steps=1.5``).

    ``reference`` is the config composed without the value overrides: a key keeps the type of its
    default there, or, where the default is null, the type :data:`NULLABLE_TYPES` names; ``null``
    itself is accepted where the default is null or a list (``head.scale=null`` turns jitter off), and
    for the keys of :data:`NULL_MEANS_AUTO` (``head.teacher_batch=null`` under the cpu preset).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for ov, parsed in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
        if parsed.is_delete() or parsed.is_sweep_override():
            continue
        key, value = parsed.key_or_group, parsed.value()
        default = OmegaConf.select(reference, key, default=None, throw_on_missing=False)
        kind = _kind(default) if default is not None else NULLABLE_TYPES.get(key.rsplit(".", 1)[-1])
        auto = key in NULL_MEANS_AUTO or key.rsplit(".", 1)[-1] in NULL_MEANS_AUTO
        if kind is None or (value is None and (default is None or auto or kind in ("integers", "numbers"))):
            continue  # null stays allowed where the default is null, and for lists (scale=null: off)
        if not _fits(value, kind):
            raw = ov.split("=", 1)[1]
            shown = f" (default {OmegaConf.to_container(default) if isinstance(default, ListConfig) else default})" \
                if default is not None else ""
            raise ConfigError(f"{key}={raw}: expected {_KIND_WORDS[kind]}{shown}")


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


def _key_error(name: str, exc: Exception, overrides: Sequence[str]) -> ConfigError:
    from hydra import compose as hydra_compose

    msg = str(exc)
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        key = m.group(1)
        # Compose again without the user's plain key overrides to list the keys that do exist.
        groups_only = [o for o in overrides if "." not in o.split("=", 1)[0] and o.split("=", 1)[0] in groups()]
        try:
            base = hydra_compose(config_name=name, overrides=groups_only)
            known = list(_leaf_keys(base))
        except Exception:  # pragma: no cover - best effort for the hint only
            known = []
        hint = did_you_mean(key, known)
        if not hint:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = [k.rsplit(".", 1)[-1] for k in known if k.startswith(parent + ".") and k.count(".") == key.count(".")]
            if siblings:
                hint = f" (keys under '{parent}': {', '.join(sorted(siblings)[:12])})"
        return ConfigError(f"unknown config key '{key}'{hint}; use +{key}=VALUE only to add a new key on purpose")
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
