"""Device selection and mixed precision: CUDA when present (AMP there), CPU otherwise.

Mixed precision is the ``amp`` key: on CUDA ``auto`` is bf16 where supported, else fp16; on a CPU
``auto`` and ``off`` run float32 and ``bf16`` switches ``torch.autocast("cpu", torch.bfloat16)`` on.
The training commands' cpu presets set ``cpu_bf16: true`` (:func:`training_amp`): under ``auto`` they
train in bf16 on a CPU with bf16 instructions and in float32 on one without.
That pays only on CPUs with bfloat16 instructions (avx512_bf16 / amx_bf16: about half a training
step where measured); without them the kernels are emulated and a step is 16-42x slower
(docs/RESULTS.md), and a warning says so. fp16 is CUDA only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from dtlabel.errors import ConfigError


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks ``cuda`` when available, else ``cpu``; ``cuda:1`` etc. are checked."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


log = logging.getLogger(__name__)


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU advertises bfloat16 instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True  # cannot tell: do not warn
    return "avx512_bf16" in flags or "amx_bf16" in flags


AMP_MODES = ("auto", "bf16", "fp16", "off", "none", "fp32", "false")


def amp_dtype(device: torch.device, mode: str | None = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` and ``amp`` mode ``mode``; None means float32."""
    mode = (str(mode) if mode is not None else "auto").lower()
    if mode not in AMP_MODES:
        raise ConfigError(f"amp={mode}: expected one of {', '.join(AMP_MODES[:4])}")
    if mode in ("off", "none", "fp32", "false"):
        return None
    if device.type == "cpu":
        if mode != "bf16":
            return None  # fp32; fp16 autocast on a CPU is slower than fp32
        if not cpu_has_bf16():
            _warn_slow_bf16()
        return torch.bfloat16
    if device.type != "cuda":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def training_amp(amp: str | None, cpu_bf16: bool, device: torch.device) -> str:
    """The ``amp`` mode a training command runs in: ``amp`` itself, except that under ``amp=auto`` a
    config section's ``cpu_bf16`` switch picks bfloat16 autocast on a CPU with native bf16 instructions
    (avx512_bf16 / amx_bf16: about half the float32 step time at the same quality, docs/RESULTS.md).
    Elsewhere bf16 is emulated and many times slower, so a CPU without them stays float32; ``amp=off``
    forces float32 anywhere."""
    mode = str(amp if amp is not None else "auto")
    if mode.lower() == "auto" and device.type == "cpu" and bool(cpu_bf16) and cpu_has_bf16():
        return "bf16"
    return mode


def precision(device: torch.device, amp: str | None) -> str:
    """What a run records of its arithmetic: ``bf16``, ``fp16`` or ``fp32``."""
    dtype = amp_dtype(device, amp)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


@functools.cache
def _warn_slow_bf16() -> None:
    log.warning("amp=bf16 on a CPU without avx512_bf16 / amx_bf16: bfloat16 kernels are emulated and training "
                "is many times slower than float32 (docs/RESULTS.md); use amp=off on this machine")
