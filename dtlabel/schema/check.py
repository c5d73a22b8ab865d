"""Checking a composed config against its schema: types, choices and ranges, one line each.

A schema is a dataclass whose fields carry their type (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``list[int]``, ``tuple[float, float]``, :data:`Size`, ``dict``, a
nested schema) and, through :func:`num`, their range. :func:`validate` walks a composed
:class:`DictConfig` against one and raises :class:`ConfigError` on the first value that does not
fit, naming the key as the user wrote it (``head.epochs=0 must be >= 1``), with the default where
the user gave the value. :func:`build` turns a checked node into the dataclass (ints become floats
where a float is declared, lists become tuples), which is what the code reads.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from dtlabel.errors import ConfigError, did_you_mean


class Size(tuple):
    """Marker type of an image size: ``[H, W]``, two whole numbers (YAML lists read as it)."""


def num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None) -> Any:
    """A field with a range: ``steps: int = num(12, ge=1)``; ``None`` stays allowed if the type allows it."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"range": bounds})


def listof(*default: Any) -> Any:
    """A list-valued field's default (dataclasses want a factory for mutable defaults)."""
    return dataclasses.field(default_factory=lambda: list(default))


def sub(schema: type) -> Any:
    """A nested schema field with its defaults."""
    return dataclasses.field(default_factory=schema)


_HINTS: dict[type, dict[str, Any]] = {}

# top-level keys the command line sets through an option: messages name the option (--labels 0)
FLAGS = {"labels": "--labels", "n": "--n"}


def hints(schema: type) -> dict[str, Any]:
    """The resolved field types of a schema (cached)."""
    if schema not in _HINTS:
        _HINTS[schema] = typing.get_type_hints(schema)
    return _HINTS[schema]


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(the type without None, whether None is allowed)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), len(args) < len(typing.get_args(tp))
    return tp, tp is Any


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seq(v: Any) -> bool:
    return isinstance(v, (list, tuple, ListConfig))


def expected(value: Any, tp: Any) -> str | None:
    """What ``value`` should have been for type ``tp`` (words for the message), or None if it fits."""
    tp, nullable = _optional(tp)
    if value is None:
        return None if nullable else _words(tp)
    if tp is Any or (dataclasses.is_dataclass(tp) and isinstance(value, (dict, DictConfig))):
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = _whole(value)
    elif tp is float:
        ok = _is_num(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Size:
        ok = _seq(value) and len(value) == 2 and all(_whole(v) for v in value)
    elif origin is Literal:
        ok = value in args
    elif origin is tuple:
        ok = _seq(value) and len(value) == len(args) and all(expected(v, a) is None for v, a in zip(value, args))
    elif origin is list or tp is list:
        ok = _seq(value) and all(expected(v, args[0]) is None for v in value) if args else _seq(value)
    elif origin is dict or tp is dict:
        ok = isinstance(value, (dict, DictConfig))
    elif dataclasses.is_dataclass(tp):
        ok = False
    return None if ok else _words(tp) + (" or null" if nullable else "")


def _words(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if tp is Size:
        return "[H,W], two whole numbers"
    if origin is tuple:
        return f"[{','.join('a b c d'.split()[:len(args)])}], {len(args)} " + (
            "numbers" if all(a is float for a in args) else "values")
    if origin is list or tp is list:
        inner = {int: "whole numbers, e.g. [64,64]", float: "numbers", str: "strings"}.get(args[0] if args else None, "values")
        return f"a list of {inner}"
    if dataclasses.is_dataclass(tp):
        return "a section of keys"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            dict: "a mapping of keys"}.get(tp, str(tp))


def out_of_range(value: Any, bounds: Mapping[str, float]) -> str | None:
    """``"must be >= 1"`` (one bound) or ``"must be in [0, 1)"`` (two) if a number is outside
    ``bounds``, else None."""
    if not _is_num(value):
        return None
    bad = any({"ge": value < b, "gt": value <= b, "le": value > b, "lt": value >= b}[op] for op, b in bounds.items())
    if not bad:
        return None
    lower = [(op, b) for op, b in bounds.items() if op in ("ge", "gt")]
    upper = [(op, b) for op, b in bounds.items() if op in ("le", "lt")]
    if lower and upper:
        (lo_op, lo), (hi_op, hi) = lower[0], upper[0]
        return f"must be in {'[' if lo_op == 'ge' else '('}{lo:g}, {hi:g}{']' if hi_op == 'le' else ')'}"
    op, bound = next(iter(bounds.items()))
    return f"must be {({'ge': '>=', 'gt': '>', 'le': '<=', 'lt': '<'})[op]} {bound:g}"


def validate(node: DictConfig | Mapping[str, Any], schema: type, prefix: str = "",
             given: Mapping[str, str] | None = None, defaults: Any = None) -> None:
    """Check every key of ``node`` against ``schema``; raise :class:`ConfigError` on the first problem.

    ``given``: the user's value overrides by full key (``{"head.epochs": "0"}``), so the message
    shows what was typed; ``defaults``: the config composed without them, for "(default X)".
    """
    given = given or {}
    spec = {f.name: f for f in dataclasses.fields(schema)}
    types_ = hints(schema)
    for key in node.keys():
        full = f"{prefix}{key}"
        if key not in spec:
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(str(key), list(spec))}"
                              f" (keys under '{prefix[:-1] or 'the top level'}': {', '.join(sorted(spec)[:14])})")
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
            continue  # a mandatory value not given yet (data.root=???) is the command's to report
        value = node[key]
        tp = types_[key]
        inner, _ = _optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(value, (DictConfig, dict)):
            validate(value, inner, f"{full}.", given, defaults)
            continue
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        problem = expected(plain, tp)
        if problem is None:
            rng = out_of_range(plain, spec[key].metadata.get("range", {}))
            if rng is not None:
                shown = given.get(full, plain)
                if full in FLAGS:  # set through a command-line option: name the option
                    raise ConfigError(f"{FLAGS[full]} {shown}: {rng}")
                raise ConfigError(f"{full}={shown} {rng}" + (" or null" if _optional(tp)[1] and tp is not Any else ""))
            continue
        choices = [str(a) for a in typing.get_args(_optional(tp)[0])] if typing.get_origin(_optional(tp)[0]) is Literal else []
        if isinstance(plain, str) and choices:
            problem += did_you_mean(plain, choices)
        raise ConfigError(_type_message(full, plain, problem, given, defaults))


def _type_message(full: str, value: Any, problem: str, given: Mapping[str, str], defaults: Any) -> str:
    if full in given and full in FLAGS:
        return f"{FLAGS[full]} {given[full]}: expected {problem}"
    if full in given:
        default = OmegaConf.select(defaults, full, default=None) if defaults is not None else None
        if isinstance(default, ListConfig):
            default = OmegaConf.to_container(default)
        shown = f" (default {default})" if default is not None else ""
        return f"{full}={given[full]}: expected {problem}{shown}"
    return f"{full}: {value!r} in the config: expected {problem}"


def build(node: DictConfig | Mapping[str, Any], schema: type) -> Any:
    """The dataclass of a checked ``node`` (nested schemas too; keys the node lacks take their defaults)."""
    values = {}
    types_ = hints(schema)
    for f in dataclasses.fields(schema):
        if not f.init or f.name not in node:
            continue
        value = node[f.name]
        if isinstance(value, (DictConfig, ListConfig)):
            inner, _ = _optional(types_[f.name])
            if dataclasses.is_dataclass(inner) and isinstance(value, DictConfig):
                values[f.name] = build(value, inner)
                continue
            value = OmegaConf.to_container(value, resolve=True)
        values[f.name] = _convert(value, types_[f.name])
    return schema(**values)


def _convert(value: Any, tp: Any) -> Any:
    inner, _ = _optional(tp)
    if value is None:
        return None
    if inner is float and _whole(value):
        return float(value)
    if (typing.get_origin(inner) is tuple or inner is Size) and _seq(value):
        args = typing.get_args(inner) or (int, int)
        return tuple(_convert(v, a) for v, a in zip(value, args))
    return value
