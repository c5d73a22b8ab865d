"""How a diffusion teacher's UNet runs its sampling steps fast: channels_last and ``torch.compile``.

A sampler calls the UNet ``steps`` times per batch with no feature hooks (the features of a sample
are read afterwards, by a hooked pass over the finished image), so those calls can go through a
compiled, channels-last copy of the same module while the hooked pass stays eager: hooks that come
and go would make a compiled graph recompile or break.

- ``channels_last``: the UNet's weights and its sampling inputs in NHWC, the layout tensor cores
  read without transposes (on a GPU with bf16/fp16 convolutions); on a CPU it rarely pays.
- ``compile``: ``torch.compile`` of the UNet for the sampling steps (default backend, inductor;
  the first batch pays the compilation, tens of seconds). ``False`` keeps plain eager calls.

Both change kernel choices, so a sample's bytes can move within rounding; neither changes what is
computed. ``docs/RESULTS.md`` ("The GPU path") says what each costs or gains where it was measured.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SamplingNet"]


class SamplingNet:
    """The module sampling steps call: ``unet`` itself, or its channels-last / compiled form.

    ``net = SamplingNet(unet, channels_last=True, compile=False)``; ``net.prepare(x)`` gives the
    input in the layout the module wants; ``net.module`` is what to call.
    """

    def __init__(self, unet: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> None:
        self.unet, self.channels_last, self.compile = unet, bool(channels_last), bool(compile)
        self._compiled: Any = None
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)  # the hooked pass reads the same weights, any layout

    @property
    def module(self) -> Any:
        """The callable of the sampling steps (compiled on first use when ``compile``)."""
        if not self.compile:
            return self.unet
        if self._compiled is None:
            self._compiled = torch.compile(self.unet, dynamic=False)
        return self._compiled

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, h, w)`` in the memory layout of the module."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
