"""``synthesize --n 100000`` on this machine: wall time, samples/s, disk and peak RSS as it grows.

Runs the real command (``python -m dtlabel.cli synthesize --n N ...``) as a child process and
samples it every ``--every`` seconds: the samples in committed shards, its resident
memory now and its peak so far (``VmRSS`` / ``VmHWM`` of ``/proc/PID/status``, Linux). For each mark
(1k, 10k, 100k by default) it records the peak RSS when the run passed it, so "memory is flat from
1k to 100k samples" is a row of figures, not a claim. A run folder that holds a plan already is
continued with ``--resume`` (a 100k run may outlast one sitting): every sitting is kept in
``scale.json`` and the rates count the samples written in the sittings it watched (a SIGTERM to the
script is passed on to the run, which ends its batch and exits, and the sitting is recorded), and a
mark keeps the sitting that passed it. Beside the wall-clock rate it gives samples per CPU second of
the child (user + system, all its threads and ranks), the figure that holds on a machine shared with
other jobs. ``--nproc N`` runs N ranks (torchrun, the documented way to use several cores or GPUs);
the memory is then summed over the ranks.

Usage::

    python benchmarks/synth_scale.py --teacher T --head H --n 100000 --out runs/synth-100k [--nproc 2] \\
        [key=value ...]                      # synthesize overrides (data=..., --preset ..., teacher.*)

Writes ``OUT/scale.json`` (the samples taken and the table) and prints a markdown table with the
exact command; its curves, projected to ``--project-to`` samples (``benchmarks/scale_curves.py``), go to
``scale.json``'s ``projected`` and ``OUT/scale.png``: the honest way to let a 20k run speak for 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scale_curves import add_projection, summary
from stages import launcher, samples_in_shards, signals_passed_to, tree_memory_mib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def disk_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "shards").glob("shard-*.tar")) if (run / "shards").is_dir() else 0


def watch(cmd: list[str], out: Path, marks: list[int], every: float) -> dict[str, Any]:
    """Run ``cmd`` and look at it every ``every`` seconds: one sitting's record. A SIGTERM or SIGINT is
    passed on to the run, which ends its batch in progress and exits; the sitting is recorded still."""
    before, t0 = samples_in_shards(out), time.time()
    proc = subprocess.Popen(cmd)
    looks: list[dict[str, Any]] = []
    passed: dict[str, dict[str, Any]] = {}
    with signals_passed_to(proc):
        while True:
            rc = proc.poll()
            mem = tree_memory_mib(proc.pid) if rc is None else None
            done = samples_in_shards(out)
            if mem is not None:
                looks.append({"s": round(time.time() - t0, 1), "samples": done, "rss_mib": round(mem[0], 1),
                              "peak_mib": round(mem[1], 1), "disk_mib": round(disk_bytes(out) / 2**20, 1)})
                passed.update({str(m): looks[-1] for m in marks if done >= m and str(m) not in passed})
            if rc is not None:
                break
            time.sleep(every)
    wall, done = time.time() - t0, samples_in_shards(out)
    # marks passed after the last look: the peak of the whole sitting (getrusage: the largest one process)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = max([usage.ru_maxrss / 1024] + [look["peak_mib"] for look in looks])
    passed.update({str(m): {"s": round(wall, 1), "samples": done, "rss_mib": None, "peak_mib": round(peak, 1)}
                   for m in marks if done >= m and str(m) not in passed})
    return {"rc": rc, "samples_before": before, "samples_after": done, "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(peak, 1), "marks": passed,
            "looks": looks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--head", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nproc", type=int, default=1, help="ranks on this machine (torchrun, one core each)")
    ap.add_argument("--marks", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--every", type=float, default=5.0, help="seconds between two looks at the run")
    ap.add_argument("--project-to", type=int, default=100_000,
                    help="the run size whose cost the curves project (benchmarks/scale_curves.py; OUT/scale.png)")
    # anything else is synthesize's: its options (--preset cpu, --device cpu, ...) and key=value overrides, in order
    args, passed = ap.parse_known_args(argv)

    out: Path = args.out
    resume = (out / "plan.json").is_file()
    cmd = [*launcher(args.nproc), "-m", "dtlabel.cli", "synthesize", "--num-samples", str(args.n), "--teacher", args.teacher,
           "--head", args.head, *passed, "--out", str(out), "-q", *(["--resume"] if resume else [])]
    sitting = watch(cmd, out, args.marks, args.every)
    if not out.is_dir():  # refused before it made its folder: synthesize said why
        return int(sitting["rc"] or 2)
    earlier = json.loads((out / "scale.json").read_text()).get("sittings", []) if (out / "scale.json").is_file() else []
    sittings = [*earlier, sitting]
    counted = sum(s["samples_after"] - s["samples_before"] for s in sittings)  # the samples of timed sittings
    wall, cpu = sum(s["wall_s"] for s in sittings), sum(s["cpu_s"] for s in sittings)
    marks = {str(m): next((s["marks"][str(m)] for s in sittings if str(m) in s["marks"]), None) for m in args.marks}
    done, size = sitting["samples_after"], disk_bytes(out)
    result = {"command": shlex.join(["python", "benchmarks/synth_scale.py", *(argv if argv is not None else sys.argv[1:])]),
              "rc": sitting["rc"], "resumed": resume, "samples": done, "samples_this_sitting": done - sitting["samples_before"],
              "samples_timed": counted, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "samples_per_s": round(counted / wall, 2) if wall > 0 else None,
              "samples_per_cpu_s": round(counted / cpu, 2) if cpu > 0 else None,
              "disk_bytes": size, "bytes_per_sample": round(size / done) if done else None,
              "peak_rss_mib": max(s["peak_rss_mib"] for s in sittings), "marks": marks, "sittings": sittings}
    projection = add_projection(result, out, args.project_to)
    (out / "scale.json.tmp").write_text(json.dumps(result, indent=1) + "\n")
    os.replace(out / "scale.json.tmp", out / "scale.json")
    print(f"`{result['command']}` ({len(sittings)} sitting(s))\n")
    print("| samples | wall s | samples/s | CPU s | samples per CPU s | disk | per sample | peak RSS at "
          + ", ".join(f"{m:,}" for m in args.marks) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    peaks = ", ".join(f"{marks[str(m)]['peak_mib']:.0f} MiB" if marks[str(m)] else "-" for m in args.marks)
    print(f"| {done:,} | {wall:.0f} | {result['samples_per_s']} | {cpu:.0f} | {result['samples_per_cpu_s']} | "
          f"{size / 2**30:.2f} GiB | {(result['bytes_per_sample'] or 0) / 1000:.1f} kB | {peaks} |")
    print("\n" + summary(projection))
    return int(sitting["rc"] or 0)


if __name__ == "__main__":
    sys.exit(main())
