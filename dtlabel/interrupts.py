"""SIGTERM and SIGINT as a clean stop: the long commands finish the step (or batch) in progress,
checkpoint, print one line that says how to continue, and exit with ``128 + signal`` (143 for
SIGTERM, what cluster schedulers send before preemption; 130 for Ctrl-C).

The CLI installs the handler for the command's life (:func:`handling`). Inside a loop that can stop
cleanly (:func:`deferred`: the engine's steps, synthesize's batches) a signal only sets a flag that
the loop reads at its next boundary (:func:`pending`); anywhere else it stops the command at once,
as Ctrl-C always did. Nothing unfinished is left looking finished: ``run.json`` is written last.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_state = {"pending": 0, "deferring": 0}
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The command was asked to stop by ``signum``; its work so far is checkpointed where it could be."""

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum, self.exit_code = int(signum), 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}{f' {where}' if where else ''}; rerun the same command with --resume to "
                         "continue")


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["deferring"]:
        _state["pending"] = signum  # read at the next step / batch boundary
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handler for SIGTERM and SIGINT (main thread only), restoring the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state["pending"] = 0
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["pending"] = 0


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside: a signal waits for :func:`pending` instead of stopping the code mid-step."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def pending() -> int:
    """The signal received inside :func:`deferred` and not yet acted on (0: none)."""
    return int(_state["pending"])
