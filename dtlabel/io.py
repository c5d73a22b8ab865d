"""Atomic file writes and hashing: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def ordinary_mode(path: str | os.PathLike[str], folder: bool = False) -> None:
    """Give ``path`` the mode the umask gives an ordinary new file (0666) or folder (0777): temporary
    files and folders from ``mkstemp`` / ``mkdtemp`` are private (0600 / 0700), and would stay so
    after the rename, leaving a teacher or a run unreadable for another user or a serving process."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        ordinary_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_with(path: str | os.PathLike[str], saver: Callable[[Path], Any]) -> Path:
    """Call ``saver(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        saver(tmp)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for sub in [tmp, *tmp.rglob("*")]:  # what libraries wrote inside may be private too (safetensors: 0600)
            if not sub.is_symlink():
                ordinary_mode(sub, folder=sub.is_dir())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_tensors(tensors: dict[str, Any], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """``safetensors`` file of ``tensors`` whose bytes depend on the tensors and ``metadata`` alone.

    safetensors writes ``__metadata__`` from a hash map, so two identical runs can order its keys
    differently; the header is rewritten with them sorted (same length: only the order moves).
    Writes ``path`` directly: call it inside :func:`atomic_path` / :func:`atomic_dir`.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # pragma: no cover - a rewrite that is not a pure reordering
        raise RuntimeError("safetensors header grew when its metadata was sorted")
    with open(path, "wb") as f:  # piece by piece: the tensor bytes are not copied again
        f.write(data[:8])
        f.write(text + b" " * (n - len(text)))
        f.write(memoryview(data)[8 + n:])
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: str | os.PathLike[str], error: type[Exception] | None = None, what: str = "",
              fix: str = "") -> dict[str, Any]:
    """Read a JSON object; any failure becomes one ``error`` (a ``DTLabelError`` subclass) line.

    ``what`` names the file for the user (default: its path); ``fix`` is appended as the remedy.
    The one reader of every descriptor, manifest and config JSON file, so they all fail the same way.
    """
    from dtlabel.errors import ModelError

    error = error or ModelError
    path = Path(path)
    name = what or str(path)
    tail = f"; {fix}" if fix else ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{name}: not found{tail}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise error(f"{name}: not valid JSON ({reason}){tail}") from None
    if not isinstance(data, dict):
        raise error(f"{name}: not a JSON object{tail}")
    return data
