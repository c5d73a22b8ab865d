"""``synthesize --n 100000`` on this machine: wall time, samples/s, disk and peak RSS as it grows.

Runs the real command (``python -m dtlabel.cli synthesize --n N ...``) as a child process and
samples it every ``--every`` seconds: the samples in finished shards (their sidecars), its resident
memory now and its peak so far (``VmRSS`` / ``VmHWM`` of ``/proc/PID/status``, Linux). For each mark
(1k, 10k, 100k by default) it records the peak RSS when the run passed it, so "memory is flat from
1k to 100k samples" is a row of figures, not a claim. A run folder that holds a plan already is
continued with ``--resume`` (a 100k run may outlast one sitting); the rate then counts this
sitting's samples only. Beside the wall-clock rate it gives samples per CPU second of the child
(user + system, all its threads), the figure that holds on a machine shared with other jobs.

Usage::

    python benchmarks/synth_scale.py --teacher T --head H --n 100000 --out runs/synth-100k \\
        [key=value ...]                      # synthesize overrides (data=..., --preset ..., teacher.*)

Writes ``OUT/scale.json`` (the samples taken and the table) and prints a markdown table with the
exact command.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def finished_samples(run: Path) -> int:
    """Samples in the shards whose sidecar is written (a shard counts once it is sealed)."""
    total = 0
    for side in (run / "shards").glob("shard-*.json") if (run / "shards").is_dir() else []:
        try:
            total += int(json.loads(side.read_text())["count"])
        except (OSError, ValueError, KeyError):
            continue  # being written: counted at the next look
    return total


def memory_mib(pid: int) -> tuple[float, float] | None:
    """(resident now, peak resident) of process ``pid`` in MiB, or None once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    kib = [float(fields[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in fields]
    return (kib[0] / 1024, kib[1] / 1024) if len(kib) == 2 else None


def disk_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "shards").glob("shard-*.tar")) if (run / "shards").is_dir() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--head", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--marks", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--every", type=float, default=5.0, help="seconds between two looks at the run")
    ap.add_argument("overrides", nargs="*", help="synthesize options and key=value overrides")
    args, passed = ap.parse_known_args(argv)  # synthesize's own options (--preset, --seed, ...) pass through

    out: Path = args.out
    resume = (out / "plan.json").is_file()
    cmd = [sys.executable, "-m", "dtlabel.cli", "synthesize", "--n", str(args.n), "--teacher", args.teacher,
           "--head", args.head, *passed, *args.overrides, "--out", str(out), "-q", *(["--resume"] if resume else [])]
    before = finished_samples(out)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    looks: list[dict[str, Any]] = []
    marks: dict[int, dict[str, Any]] = {}
    while True:
        rc = proc.poll()
        mem = memory_mib(proc.pid) if rc is None else None
        done = finished_samples(out)
        if mem is not None:
            looks.append({"s": round(time.time() - t0, 1), "samples": done, "rss_mib": round(mem[0], 1),
                          "peak_mib": round(mem[1], 1)})
            for m in args.marks:
                if done >= m and m not in marks:
                    marks[m] = looks[-1]
        if rc is not None:
            break
        time.sleep(args.every)
    wall = time.time() - t0
    done = finished_samples(out)
    # marks passed after the last look: the child's peak over the whole run (getrusage, KiB), an upper bound
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_all, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    for m in args.marks:
        if done >= m and m not in marks:
            marks[m] = {"s": round(wall, 1), "samples": done, "rss_mib": None, "peak_mib": round(peak_all, 1)}
    size = disk_bytes(out)
    result = {"command": shlex.join(["python", "benchmarks/synth_scale.py", *(argv if argv is not None else sys.argv[1:])]),
              "rc": rc, "resumed": resume, "samples": done, "samples_this_sitting": done - before,
              "wall_s": round(wall, 1), "samples_per_s": round((done - before) / wall, 2) if wall > 0 else None,
              "cpu_s": round(cpu, 1), "samples_per_cpu_s": round((done - before) / cpu, 2) if cpu > 0 else None,
              "disk_bytes": size, "bytes_per_sample": round(size / done) if done else None,
              "peak_rss_mib": round(peak_all, 1),
              "marks": {str(m): marks.get(m) for m in args.marks}, "looks": looks}
    (out / "scale.json.tmp").write_text(json.dumps(result, indent=1) + "\n")
    os.replace(out / "scale.json.tmp", out / "scale.json")
    print(f"`{result['command']}`\n")
    print("| samples | wall s | samples/s | CPU s | samples per CPU s | disk | per sample | peak RSS at "
          + ", ".join(f"{m:,}" for m in args.marks) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    peaks = ", ".join(f"{marks[m]['peak_mib']:.0f} MiB" if m in marks else "-" for m in args.marks)
    print(f"| {done:,} | {wall:.0f} | {result['samples_per_s']} | {cpu:.0f} | {result['samples_per_cpu_s']} | {size / 2**30:.2f} GiB | "
          f"{(result['bytes_per_sample'] or 0) / 1000:.1f} kB | {peaks} |")
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
