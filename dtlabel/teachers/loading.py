"""Model folders: where the model is, how its components load (offline, safetensors first), its hash.

Nothing here knows a model family: the families (``ddpm.py``, ``stable_diffusion.py``) say which
components a folder holds, these helpers load them and turn every loading failure into one
``ModelError`` line that names the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from dtlabel.errors import ModelError
from dtlabel.io import read_json

logger = logging.getLogger(__name__)

__all__ = [
    "has_safetensors",
    "hash_model_folder",
    "load_component",
    "make_scheduler",
    "parameter_names",
    "quiet_progress_bars",
    "read_model_json",
    "resolve_model_root",
    "shipped_model",
]

# Files that define a model folder; their bytes make the teacher hash.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def shipped_model(path: str | Path) -> Path | None:
    """The package's copy of a shipped model for ``models/<name>`` (e.g. ``models/default``, the
    default data's teacher), or None. Shipped models are package data, so an installed dtlabel has
    them wherever it runs; a folder that exists at ``path`` itself always wins over this."""
    parts = Path(path).parts
    if len(parts) != 2 or parts[0] != "models":
        return None
    folder = Path(str(resources.files("dtlabel") / "models" / parts[1]))
    return folder if folder.is_dir() else None


# beside an exported teacher's weights: how it was trained (family, steps, size, seed; read by fit.init_from)
TEACHER_META = "dtlabel_teacher.json"


def resolve_model_root(path: str | Path) -> Path:
    """Return the folder that holds the model for ``path``.

    A fit-teacher run folder keeps its model in ``teacher/``; any other folder is returned as is;
    ``models/<name>`` that is no folder here is the shipped model of that name (``shipped_model``).
    Raises ``ModelError`` if ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path = shipped_model(path) or path
    if not path.exists():
        raise ModelError(
            f"teacher folder not found: {path}; pass --teacher with a fit-teacher run folder or a local "
            "diffusers model folder"
        )
    sub = path / "teacher"
    if sub.is_dir() and any((sub / name).is_file() for name in ("model_index.json", "config.json", "gan.json")):
        if (path / "config.yaml").is_file() and not (path / "run.json").is_file():
            raise ModelError(f"teacher folder {path}: an unfinished fit-teacher run (no run.json); finish it with "
                             "the same command and --resume, or pass its teacher/ folder on purpose")
        return sub
    return path


def warn_if_stopped_early(path: str | Path) -> None:
    """Note in the run's log when ``path`` is a fit-teacher run that its time budget stopped before its
    planned steps (``stopped_early`` in its run.json): every later figure rests on a less trained
    teacher. fit-teacher itself warns once, when it stops; the commands that load the teacher later
    only log it (the budget was the user's own choice, and the teacher's run.json keeps it)."""
    desc = Path(path).expanduser() / "run.json"
    if not desc.is_file():
        return
    try:
        info = read_json(desc, ModelError)
    except ModelError:
        return
    if info.get("command") == "fit-teacher" and info.get("stopped_early") and os.environ.get("RANK", "0") == "0":
        if info.get("schedule") == "budget":  # its cosine ended with the budget: annealed, not cut short
            logger.info("teacher %s was trained to its time budget (fit.optim.schedule=budget): step %s of %s planned, "
                           "the lr annealed by the end", path, info.get("steps"), info.get("steps_planned", "?"))
            return
        logger.info("teacher %s stopped early (time budget) at step %s of %s; continue it with fit-teacher --resume "
                    "for the teacher it was planned to be", path, info.get("steps"), info.get("steps_planned", "?"))


def read_model_json(path: Path) -> dict[str, Any]:
    """A JSON object of a model folder; ``ModelError`` naming the file (and the fix) otherwise."""
    return read_json(path, ModelError, fix="re-save the model with save_pretrained")


def has_safetensors(folder: Path) -> bool:
    """True if ``folder`` holds at least one ``*.safetensors`` weights file."""
    return folder.is_dir() and any(folder.glob("*.safetensors"))


WEIGHTS = "*.safetensors|*.bin"  # a component's weights, in either format


def missing_files(root: Path, needs: Mapping[str, Sequence[str]]) -> list[str]:
    """What a model folder lacks of what its family needs: ``needs`` maps a subfolder ("" = the root)
    to required entries, each a ``|``-separated list of alternatives (file names or globs). Returns the
    missing ones as ``subfolder/alternatives``; checked when the folder is loaded, so an incomplete
    download is one line naming the files rather than a traceback deep in a library."""
    missing = []
    for sub, entries in needs.items():
        folder = root / sub if sub else root
        for entry in entries:
            if not any(any(folder.glob(alt)) if any(c in alt for c in "*?[") else (folder / alt).is_file()
                       for alt in entry.split("|")):
                missing.append(f"{sub + '/' if sub else ''}{entry.replace('|', ' or ')}")
    return missing


def load_component(cls: Any, root: Path, subfolder: str | None = None) -> Any:
    """``cls.from_pretrained`` from a local folder, offline, preferring safetensors.

    Weights in safetensors are required to be used when present (``use_safetensors=True``); a folder
    with only ``.bin`` files falls back to the libraries' ``weights_only`` loading. Loading errors
    become one-line ``ModelError`` s that name the folder.
    """
    folder = root / subfolder if subfolder else root
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    name = getattr(cls, "__name__", "")
    if "Tokenizer" not in name and "Scheduler" not in name:  # tokenizers and schedulers have no weights
        if has_safetensors(folder):
            kwargs["use_safetensors"] = True
            weights = [p.name for p in folder.glob("*.safetensors")]
            if all(".fp16." in n for n in weights):  # a Hub folder with only the fp16 variant
                kwargs["variant"] = "fp16"
        else:
            logger.warning("no safetensors weights in %s; loading .bin weights with weights_only=True", folder)
    if cls.__module__.startswith("diffusers") and importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # the default needs accelerate and warns without it
    try:
        with quiet_progress_bars():
            return cls.from_pretrained(str(root), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot load {cls.__name__} from {folder}: {first}; check that the folder was written by "
            "save_pretrained and is complete"
        ) from e


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide the diffusers / transformers loading and saving progress bars (library code prints nothing)."""
    toggles = []
    for mod in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = importlib.import_module(mod)
        except ImportError:
            continue
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            toggles.append(lib)
    try:
        yield
    finally:
        for lib in toggles:
            lib.enable_progress_bar()


def parameter_names(fn: Any) -> set[str]:
    """Names of the parameters of the callable ``fn`` (empty if it has no inspectable signature)."""
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def hash_model_folder(root: str | Path, length: int = 16) -> str:
    """Short sha256 of the weights and configs under ``root`` (paths + bytes, sorted).

    Covers ``*.safetensors``, ``*.bin``, ``*.json``, ``*.txt`` and ``*.model`` files, so two folders
    with the same model get the same hash wherever they are, and any change to a weight or a config
    changes it. Hidden files and folders are skipped.
    """
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in _HASHED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def make_scheduler(cls: Any, config: Mapping[str, Any], **overrides: Any) -> Any:
    """``cls.from_config(config)`` with the ``overrides`` that ``cls`` accepts (others dropped)."""
    accepted = parameter_names(cls.__init__)
    return cls.from_config(dict(config), **{k: v for k, v in overrides.items() if k in accepted})
