"""Device selection and mixed precision: CUDA when present (AMP there), CPU otherwise.

Mixed precision is the ``amp`` key: on CUDA ``auto`` is bf16 where supported, else fp16; on a CPU
``auto`` and ``off`` run float32 and ``bf16`` switches ``torch.autocast("cpu", torch.bfloat16)`` on
(about half a training step on CPUs with avx512_bf16 / AMX, docs/RESULTS.md). fp16 is CUDA only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


AMP_MODES = ("auto", "bf16", "fp16", "off", "none", "fp32", "false")


def amp_dtype(device: torch.device, mode: str | None = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` and ``amp`` mode ``mode``; None means float32."""
    mode = (str(mode) if mode is not None else "auto").lower()
    if mode not in AMP_MODES:
        raise ConfigError(f"amp={mode}: expected one of {', '.join(AMP_MODES[:4])}")
    if mode in ("off", "none", "fp32", "false"):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if mode == "bf16" else None  # fp16 autocast on a CPU is slower than fp32
    if device.type != "cuda":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
