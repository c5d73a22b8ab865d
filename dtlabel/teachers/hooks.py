"""Forward hooks on named submodules, with an early stop (timm's ``FeatureHooks`` idea).

A teacher reads features as the outputs of some submodules of its network, named as in
``model.named_modules()`` (``"up_blocks.1"``, ``"mid_block"``). :func:`run_hooked` runs one forward
with hooks on those modules; with ``stop=True`` the hook that completes the set raises an internal
exception that skips the rest of the network (later blocks, output convs) and never leaves here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from dtlabel.errors import ConfigError, did_you_mean

__all__ = ["capture_outputs", "check_blocks", "output_info", "run_hooked"]


class _StopForward(Exception):
    """Raised by the last feature hook to skip the rest of the forward (never leaves this module)."""


def _first_tensor(output: Any) -> torch.Tensor:
    """The hidden state of a block output: a tensor, or the first element of a tuple / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


@contextlib.contextmanager
def capture_outputs(
    model: torch.nn.Module, names: Sequence[str], store: dict[str, torch.Tensor], stop: bool = False
) -> Iterator[None]:
    """Forward hooks that keep a reference to the output of each submodule in ``names`` in ``store``.

    With ``stop``, the hook that completes ``store`` raises the internal stop signal, so the rest of
    the forward is skipped; only :func:`run_hooked` should be used with ``stop=True``.
    """
    wanted = len(names)

    def make_hook(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            store[name] = _first_tensor(output)
            if stop and len(store) == wanted:
                raise _StopForward

        return hook

    handles = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_blocks(
    model: torch.nn.Module, blocks: Sequence[str], examples: Sequence[str], what: str = "model"
) -> tuple[str, ...]:
    """``blocks`` as a tuple, checked to be distinct names of ``model``'s submodules.

    Raises ``ConfigError`` naming ``examples`` (typical block names) and the close matches.
    """
    if not blocks:
        raise ConfigError("no feature blocks: pass blocks=[...] (e.g. up_blocks.1, mid_block)")
    names = dict(model.named_modules())
    for b in blocks:
        if not b or b not in names:
            raise ConfigError(
                f"unknown teacher block {b!r}; blocks are names of {what} submodules such as "
                f"{', '.join(examples)}{did_you_mean(b, names)}"
            )
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"duplicate teacher blocks: {list(blocks)}")
    return tuple(blocks)


def run_hooked(
    model: torch.nn.Module,
    names: Sequence[str],
    forward: Callable[[], Any],
    stop: bool,
    context: contextlib.AbstractContextManager | None = None,
    what: str = "model",
) -> tuple[dict[str, torch.Tensor], Any]:
    """Call ``forward()`` with hooks on ``model``'s submodules ``names``.

    Returns ``(outputs by name, forward's result or None if stopped early)``. ``context`` (e.g. an
    autocast) is entered inside the hooks. Raises ``ConfigError`` if a named submodule did not run.
    """
    store: dict[str, torch.Tensor] = {}
    out = None
    with capture_outputs(model, names, store, stop), context or contextlib.nullcontext():
        try:
            out = forward()
        except _StopForward:
            pass
    missing = [n for n in names if n not in store]
    if missing:
        raise ConfigError(f"teacher blocks {missing} did not run in the {what} forward; pick other blocks")
    return store, out


def output_info(outputs: Mapping[str, torch.Tensor], size: int, scale: int = 1) -> dict[str, tuple[int, int]]:
    """``{name: (channels, stride)}`` of the maps a dry run on a ``size`` x ``size`` input produced.

    ``scale`` converts the network's own stride to an image stride (pixels per input position, e.g.
    a VAE's 8). Raises ``ConfigError`` for an output that is not a ``(B, C, h, w)`` map.
    """
    info = {}
    for name, out in outputs.items():
        if out.ndim != 4 or size % out.shape[-1]:
            raise ConfigError(f"teacher block {name!r} does not output a (B, C, h, w) map; pick another block")
        info[name] = (int(out.shape[1]), size // int(out.shape[-1]) * scale)
    return info
