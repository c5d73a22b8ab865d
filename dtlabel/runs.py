"""Run folders: every command writes one, and reads earlier commands' run folders as inputs.

A run folder holds the resolved ``config.yaml``, ``<command>.log``, the command's artifacts and a
descriptor ``run.json`` written last and atomically. A folder without ``run.json`` is incomplete:
later commands refuse it, and the same command continues it with ``--resume``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dtlabel import __version__
from dtlabel.config import to_yaml
from dtlabel.errors import RunError
from dtlabel.io import read_json, write_json, write_text

DESCRIPTOR = "run.json"
LOCK = ".dtlabel.lock"  # held (an OS file lock) by the command writing the folder, for its whole life
log = logging.getLogger(__name__)


class TimeBudgetReached(Exception):
    """A command stopped by its time budget (``*.max_minutes``) before the end of its training: the
    run folder holds a checkpoint but no ``run.json``, so later commands refuse it and the same
    command with ``--resume`` continues it. Not an error: the CLI says so and exits with 0."""

    def __init__(self, command: str, step: int, total: int) -> None:
        super().__init__(f"{command}: time budget reached at step {step} of {total}; the run is checkpointed and "
                         "unfinished, continue it with the same command and --resume")


def default_out(command: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / command / stamp
    n = 1
    while path.exists():  # two runs in the same second
        n += 1
        path = Path(root) / command / f"{stamp}-{n}"
    return path


@dataclass
class Run:
    """An open run folder of ``command``."""

    command: str
    path: Path
    cfg: DictConfig
    resumed: bool = False
    rank: int = 0
    lock: Any = None

    def release(self) -> None:
        """Let go of the folder's lock (the OS does it anyway when the process ends, killed or not)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    @classmethod
    def open(cls, command: str, cfg: DictConfig, out: str | Path | None, resume: bool = False) -> "Run":
        """Create (or, with ``resume``, reopen) the run folder and write ``config.yaml``."""
        path = Path(out) if out else default_out(command)
        rank = int(os.environ.get("RANK", "0"))
        if rank > 0:
            # Under torchrun, rank 0 owns the folder: it checks and creates it and writes config.yaml,
            # the log and run.json. The other ranks touch nothing before the command's first barrier.
            if out is None:
                raise RunError("under torchrun pass --out DIR so that every rank writes the same run folder")
            return cls(command=command, path=path, cfg=cfg, resumed=resume, rank=rank)
        resumed = False
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file; pass a folder path")
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = _lock(path)
        except OSError as exc:
            raise RunError(f"--out {path}: cannot create the run folder ({exc.strerror or type(exc).__name__}); "
                           "choose a folder you can write to") from None
        try:  # checked under the lock: two commands on one folder cannot both find it empty
            # a folder holding only what a refused attempt of this command wrote (its config.yaml and log)
            # has no work in it: the same command starts there again without --resume, the log appended
            names = {p.name for p in path.iterdir()} - {LOCK}
            if names - {"config.yaml", f"{command}.log"} or (resume and names):
                desc = path / DESCRIPTOR
                if not resume:
                    state = "a finished run" if desc.exists() else "an unfinished run"
                    raise RunError(
                        f"--out {path} already holds {state}; pass --resume to continue it or choose another --out"
                    )
                if desc.exists():
                    prev = read_json(desc, RunError, what=f"--out {path}: {DESCRIPTOR}")
                    if prev.get("command") != command:
                        raise RunError(f"--resume: {path} is a '{prev.get('command')}' run, not '{command}'")
                resumed = True
            write_text(path / "config.yaml", to_yaml(cfg))
        except OSError as exc:
            lock.close()
            raise RunError(f"--out {path}: cannot create the run folder ({exc.strerror or type(exc).__name__}); "
                           "choose a folder you can write to") from None
        except BaseException:
            lock.close()
            raise
        return cls(command=command, path=path, cfg=cfg, resumed=resumed, lock=lock)

    @property
    def log_file(self) -> Path | None:
        if self.rank > 0:  # rank 0 logs for everyone; the others print warnings only
            return None
        return self.path / f"{self.command}.log"

    def finish(self, **descriptor: Any) -> Path:
        """Write ``run.json`` (last, atomically). Keys: whatever the next command needs to check."""
        if self.rank > 0:  # rank 0 writes the descriptor once every rank is done
            return self.path / DESCRIPTOR
        data = {
            "command": self.command,
            "dtlabel_version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "peak_rss_mib": peak_rss_mib(),
            **descriptor,
        }
        return write_json(self.path / DESCRIPTOR, data)


def _lock(path: Path) -> Any:
    """Take the run folder's lock: an exclusive, non-blocking OS lock on ``LOCK``, released by the OS
    when the process ends however it ends (a killed run leaves no stale lock). Another live command
    holding it is one ``RunError``."""
    handle = open(path / LOCK, "a+")  # noqa: SIM115 - held open for the command's life
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): unguarded, as before
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunError(f"--out {path} is in use by another dtlabel command{f' (process {holder})' if holder else ''}; "
                       "wait for it to end or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (its DataLoader workers not included; rank 0's on DDP),
    or None where the OS does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def finished_command(path: Path) -> str | None:
    """The command of a finished run folder (its run.json), else None."""
    try:
        return json.loads((path / DESCRIPTOR).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def folder_bytes(path: Path, skip: str | None = None) -> int:
    """Bytes of the files under ``path`` (without its subfolder ``skip``); symbolic links are not
    followed and a hard-linked file counts once (a student's weights are stored once, linked twice)."""
    total, seen = 0, set()
    for p in path.rglob("*"):
        if skip and p.relative_to(path).parts[0] == skip:
            continue
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def read_run(path: str | Path, command: str | tuple[str, ...], option: str) -> dict[str, Any]:
    """Read the descriptor of a finished run folder given to ``option`` (e.g. ``--head``)."""
    path = Path(path)
    commands = (command,) if isinstance(command, str) else command
    if not path.is_dir():
        raise RunError(f"{option} {path}: folder not found; pass the run folder of 'dtlabel {commands[0]}'")
    desc = path / DESCRIPTOR
    if not desc.is_file():
        raise RunError(f"{option} {path}: no {DESCRIPTOR}, the run is unfinished; rerun it with --resume")
    data = read_json(desc, RunError, what=f"{option} {path}: {DESCRIPTOR}", fix="rerun the command with --resume")
    if data.get("command") not in commands:
        raise RunError(f"{option} {path}: is a '{data.get('command')}' run, expected {' or '.join(commands)}")
    return data
