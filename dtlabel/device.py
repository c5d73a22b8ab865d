"""Device selection and mixed precision: CUDA when present (AMP there), CPU otherwise."""

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


def amp_dtype(device: torch.device, mode: str | None = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device``: None (fp32) on CPU, bf16 where supported, else fp16."""
    mode = (mode or "auto").lower()
    if device.type != "cuda" or mode in ("off", "none", "fp32", "false"):
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
