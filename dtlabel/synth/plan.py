"""A synthesize run's plan and its shards: what every restart must match, which shards a rank still
owes, and the loop that labels and writes them.

``plan.json`` (written once, first) fixes everything the bytes of a sample depend on: the mode, the
count, the shard size, the base seed, the sizes, the image format, the teacher's and labeler's
hashes, the sampler and (real images) the file list. ``--resume`` is refused in one line if any of
it changed, before anything in the folder is touched. Shard ``j`` holds indices
``[j*S, (j+1)*S)`` and rank ``r`` of ``K`` owns the shards with ``j % K == r``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dtlabel import interrupts
from dtlabel.errors import RunError
from dtlabel.io import read_json, write_json
from dtlabel.runs import DESCRIPTOR
from dtlabel.synth.shards import MANIFEST, PLAN, SHARD_DIR, shard_complete
from dtlabel.synth.writer import ShardWriter

__all__ = ["check_plan", "prepare_folder", "shards_to_write", "write_shards"]

# one batch: the sample indices -> (samples in the shard format, the indices skipped as unreadable)
LabelBatch = Callable[[list[int]], tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]


def prepare_folder(run_dir: Path, plan: dict[str, Any]) -> None:
    """Rank 0: the plan every restart must match (checked before anything is removed, so a refused
    --resume leaves a finished run as it was), the shard folder, no temporary leftovers."""
    if (run_dir / PLAN).is_file():
        check_plan(run_dir, plan)
    folder = run_dir / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in list(folder.glob(".*.tmp")) + list(run_dir.glob(".*.tmp")):
        tmp.unlink()
    for stale in (run_dir / DESCRIPTOR, run_dir / MANIFEST):
        if stale.exists():  # a resumed run is unfinished until it writes them again, manifest then run.json
            stale.unlink()
    if not (run_dir / PLAN).is_file():
        write_json(run_dir / PLAN, plan)


def check_plan(run_dir: Path, plan: dict[str, Any]) -> None:
    """Refuse (one ``RunError`` line) a restart whose plan differs from the folder's ``plan.json``."""
    prev = read_json(run_dir / PLAN, RunError, fix="delete the run folder or use another --out")
    for key in plan:
        if prev.get(key) != plan[key]:
            what = "the image folder's files" if key == "files" else key
            raise RunError(f"--resume: {run_dir} was started with another {what} "
                           f"({_short(prev.get(key))} != {_short(plan[key])}); use the same command or another --out")


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


def shards_to_write(run_dir: Path, n_shards: int, rank: int, world: int, verify: bool) -> tuple[list[int], list[int]]:
    """(this rank's shards, those of them not yet committed); ``verify`` re-hashes committed shards
    against their sidecars before trusting them."""
    mine = [j for j in range(n_shards) if j % world == rank]
    return mine, [j for j in mine if not shard_complete(run_dir / SHARD_DIR, j, verify)]


def write_shards(writer: ShardWriter, todo: Sequence[int], ranges: Sequence[tuple[int, int]], batch_size: int,
                 label: LabelBatch) -> int:
    """Label and write the shards ``todo`` (``ranges[j]``: its first and last index) in batches of
    ``batch_size``, then let the writer finish; returns 0, or the signal (SIGTERM / SIGINT) that
    stopped it after the batch in progress: the shards closed so far stay, the open one is left as a
    temporary file that ``--resume`` removes."""
    signum = 0
    with interrupts.deferred():
        for j in todo:
            first, last = ranges[j]
            writer.open(j, first, last)
            for start in range(first, last + 1, batch_size):
                samples, skipped = label(list(range(start, min(last + 1, start + batch_size))))
                writer.add(samples, skipped)
                if (signum := interrupts.pending()):
                    break
            if signum:
                break  # this shard stays unfinished
            writer.close(j)
        writer.finish()
    return signum
