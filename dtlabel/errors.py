"""User-facing errors.

Every problem caused by the user's input (paths, data, configs, model folders) is raised as a
:class:`DTLabelError` subclass at the place where the input enters. The CLI prints such errors as a
single line on stderr and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DTLabelError(Exception):
    """Base class of errors the user can fix. The message is one line: what, where, and the fix."""

    exit_code = 2

    def __str__(self) -> str:  # keep it on one line whatever the caller passed
        text = super().__str__()
        if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the worker's own line
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith(("dtlabel.", type(self).__name__)) and ": " in last else last
        return " ".join(text.split())


class ConfigError(DTLabelError):
    """An unknown key, an unknown group option or an invalid value in the configuration."""


class DataError(DTLabelError):
    """A data set that cannot be read or is inconsistent (missing root, corrupt image, bad mask)."""


class ModelError(DTLabelError):
    """A model folder or weights file that cannot be loaded (wrong path, not a diffusers folder)."""


class RunError(DTLabelError):
    """A run folder that is missing, incomplete or of the wrong kind."""


def did_you_mean(word: str, options: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' for close matches of ``word`` in ``options``, else ''."""
    matches = difflib.get_close_matches(word, list(options), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


class TrainingDiverged(DTLabelError):
    """The training loss became NaN or infinite (raised by the engine for every training command)."""
