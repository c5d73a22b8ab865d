"""The stage runner the experiment scripts share: one ordinary ``dtlabel`` command per run folder.

A stage whose folder holds ``run.json`` is finished and skipped; an unfinished one (the folder
exists) continues with ``--resume``; the command is printed before it runs, so a table in
docs/RESULTS.md can be traced to the exact commands behind it. A SIGTERM or SIGINT to the script is
passed on to the stage, which ends its step or batch in progress and exits; the script waits for it,
so what the stage spent is still accounted for (``benchmarks/sampler_table.py``'s CPU ledger).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def signals_passed_to(child: subprocess.Popen) -> Iterator[None]:
    """While inside, a SIGTERM or SIGINT to this script goes to ``child`` instead (a dtlabel command ends
    its step or batch in progress and exits), so the script lives on to account for what it spent."""
    previous = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def samples_in_shards(run: Path) -> int:
    """Samples in the committed shards of a synthesize run folder (0 before it starts): a shard counts once
    its tar is renamed into place, after its sidecar (a sidecar being written is counted at the next look)."""
    total = 0
    for side in (run / "shards").glob("shard-*.json"):
        try:
            total += int(json.loads(side.read_text())["count"]) if side.with_suffix(".tar").is_file() else 0
        except (OSError, ValueError, KeyError):
            continue
    return total


def tree_memory_mib(pid: int) -> tuple[float, float] | None:
    """(resident now, peak resident) in MiB of process ``pid`` and its descendants (torchrun's ranks),
    summed over the processes (the summed peaks bound the tree's peak from above); None once it is gone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    now = peak = 0.0
    found, todo = False, [pid]
    while todo:
        proc = todo.pop()
        todo += children.get(proc, [])
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{proc}/status").read_text().splitlines()
                          if ":" in line)
        except OSError:
            continue
        if "VmRSS" in status and "VmHWM" in status:
            found = True
            now += float(status["VmRSS"].split()[0]) / 1024
            peak += float(status["VmHWM"].split()[0]) / 1024
    return (now, peak) if found else None


def done(folder: Path) -> bool:
    return (folder / "run.json").is_file()


def launcher(nproc: int) -> list[str]:
    """The command that starts ``nproc`` ranks of a Python module on this machine: torchrun, the documented
    way to use several cores (dtlabel's distributed commands split their work by rank), or plain Python.
    torchrun's parser takes a word that abbreviates one of its own options (``--n`` for ``--nnodes``) even
    after the module, so a command under it spells its options in full (``--num-samples``)."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [sys.executable]


def run_stage(folder: Path, words: list[str], nproc: int = 1,
              look: Callable[[int], None] | None = None, every: float = 2.0) -> int:
    """Run ``dtlabel WORDS --out FOLDER`` (``--resume`` if started) unless finished, on ``nproc`` ranks;
    the exit code. ``look(pid)`` is called every ``every`` seconds while it runs (its memory, say)."""
    if done(folder):
        return 0
    cmd = [*launcher(nproc), "-m", "dtlabel.cli", *words, "--out", str(folder)]
    if folder.exists():
        cmd.append("--resume")
    ranks = f"torchrun --standalone --nproc_per_node {nproc} " if nproc > 1 else ""
    print(f"+ {ranks}dtlabel", shlex.join(cmd[cmd.index("dtlabel.cli") + 1:]), flush=True)
    child = subprocess.Popen(cmd)
    with signals_passed_to(child):
        while look is not None and child.poll() is None:
            look(child.pid)
            time.sleep(every)
        rc = child.wait()
    if rc != 0:
        print(f"{folder.name} failed (exit {rc}); see {folder}", file=sys.stderr)
    return rc
