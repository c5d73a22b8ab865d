"""How many pseudo-labels pay: the same student on the first N samples of one synth run, for several N.

For each N of ``--sizes`` and each seed of ``--seeds`` it trains the demo's distilled student (the
sampler table's students: ``train-student --synth RUN --labels L``, one stage, hard labels, a fixed
number of steps) on the run's first N samples (``student.synth_samples=N``: the set ``synthesize --n N``
with the same seeds writes), and the scratch student (the same recipe without pseudo-labels) as the
reference (one per seed); each is scored on the *real* test split. One large run thus gives the whole curve, and
the rows differ by the number of pseudo-labels alone: every student takes the same steps, so a larger
N means fewer passes over more distinct samples.

Each student's memory is watched every second: the peak resident memory of its process tree (the
trainer and its DataLoader workers when ``num_workers`` > 0, summed: an upper bound, workers share
pages with the trainer), so "the student streams: its memory does not grow with N" is a column of
figures. Every stage is an ordinary dtlabel command in a folder of its own (``benchmarks/stages.py``):
a finished stage is skipped, an unfinished one continues with ``--resume``. Two instances may share
``--out`` on disjoint ``--seeds`` (one core each): ``OUT/memory.json`` is merged under a lock.

Usage::

    python benchmarks/synth_curve.py --synth runs/synth-20k --out runs/synth-curve \\
        [--sizes 1000 5000 10000 20000] [--seeds 0 1] [--preset cpu] [--report-only] [key=value ...]

(``key=value`` overrides reach every student.) Writes ``OUT/results.md`` (the table and the exact
commands), ``OUT/results.json`` and ``OUT/curve.png`` (test mIoU against N).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from sampler_table import demo_recipe
from stages import done, run_stage, tree_memory_mib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


class PeakMemory:
    """The peak summed resident memory (MiB) of each stage's process tree, over its sittings, kept in
    ``OUT/memory.json`` (merged under a lock: another instance may write it too)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "memory.json"

    def read(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, folder: Path, words: list[str]) -> int:
        if done(folder):
            return 0
        peak = [0.0]

        def look(pid: int) -> None:
            mem = tree_memory_mib(pid)
            peak[0] = max(peak[0], mem[1] if mem else 0.0)

        rc = run_stage(folder, words, look=look, every=1.0)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            values = self.read()
            values[name] = round(max(values.get(name, 0.0), peak[0]), 1)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(values, indent=1) + "\n")
            os.replace(tmp, self.path)
        return rc


def student_row(folder: Path, memory: dict[str, float], name: str) -> dict[str, Any] | None:
    """Test mIoU, seconds, samples and memory of a finished student run folder (None until it is)."""
    if not done(folder):
        return None
    run = json.loads((folder / "run.json").read_text())
    return {"miou": float(run["test_miou"]), "seconds": run.get("seconds"), "synth_samples": run.get("synth_samples"),
            "steps": run.get("steps"), "peak_rss_mib": run.get("peak_rss_mib"), "tree_peak_mib": memory.get(name)}


def summarised(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One row's students taken together: their mean test mIoU, each seed's, their steps, mean seconds and
    largest memory (None before any is finished)."""
    if not runs:
        return None
    return {"miou": sum(r["miou"] for r in runs) / len(runs), "each": [r["miou"] for r in runs],
            "steps": runs[0]["steps"], "seconds": sum(r["seconds"] or 0 for r in runs) / len(runs),
            "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in runs),
            "tree_peak_mib": max(r["tree_peak_mib"] or 0 for r in runs), "synth_samples": runs[0]["synth_samples"]}


def line(label: str, summary: dict[str, Any] | None, gap: str, note: str = "") -> str:
    """One table line: a row's summary (``summarised``), its gap to the scratch student."""
    if summary is None:
        return f"| {label} | - | - | - | - | - | - |"
    each = ", ".join(f"{m:.2f}" for m in summary["each"])
    return (f"| {label} | {each}{note} | {summary['miou']:.2f} | {gap} | {summary['steps']} | "
            f"{summary['peak_rss_mib']:.0f} / {summary['tree_peak_mib']:.0f} | {summary['seconds']:.0f} |")


def table(rows: list[dict[str, Any]], scratch: dict[str, Any] | None) -> str:
    lines = ["| pseudo-labels (first N) | student test mIoU (each seed) | mean | vs scratch | steps | "
             "peak RSS: trainer / process tree (MiB) | seconds per student |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        gap = f"{r['summary']['miou'] - scratch['miou']:+.2f}" if r["summary"] and scratch else "-"
        lines.append(line(f"{r['n']:,}", r["summary"], gap, "" if r["complete"] else " (not every seed yet)"))
    if scratch:
        lines.append(line("scratch student (reference)", scratch, "-"))
    return "\n".join(lines)


def draw(rows: list[dict[str, Any]], scratch: dict[str, Any] | None, path: Path) -> None:
    """Test mIoU against N (each seed a dot, the mean a line), the scratch student a dashed line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    done_rows = [r for r in rows if r["summary"]]
    for r in done_rows:
        ax.scatter([r["n"]] * len(r["runs"]), r["summary"]["each"], color="tab:blue", s=14, alpha=0.6)
    if done_rows:
        ax.plot([r["n"] for r in done_rows], [r["summary"]["miou"] for r in done_rows],
                color="tab:blue", marker="o", label="student on the first N pseudo-labels (mean)")
    if scratch:
        ax.axhline(scratch["miou"], color="gray", linestyle="--", label="scratch student (the labels alone)")
    ax.set_xscale("log")
    ax.set_xlabel("pseudo-labelled samples N")
    ax.set_ylabel("test mIoU")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synth", type=Path, required=True, help="a finished synthesize run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="cpu", help="the demo preset whose student recipe runs")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table of the students finished so far")
    p.add_argument("overrides", nargs="*", help="key=value for every student")
    args = p.parse_args(argv)

    manifest = args.synth / "manifest.json"
    if not manifest.is_file():
        print(f"synth_curve: {args.synth} is not a finished synthesize run (no manifest.json)", file=sys.stderr)
        return 2
    made = len(json.loads(manifest.read_text())["scores"])
    if too_many := [n for n in args.sizes if not 1 <= n <= made]:
        print(f"synth_curve: --sizes {too_many}: the run made {made} samples", file=sys.stderr)
        return 2
    recipe, labels = demo_recipe(args.preset)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    memory = PeakMemory(out)
    base = ["train-student", "--labels", labels, *recipe["data"], *recipe["students"], "student.label_seed=0",
            *args.overrides]
    stages = []
    for seed in args.seeds:  # seed by seed, so two instances on disjoint seeds never share a stage
        stages.append((f"scratch-seed{seed}", [*base, "--seed", str(seed)]))
        for n in sorted(args.sizes):
            stages.append((f"student-n{n}-seed{seed}", [*base, "--seed", str(seed), "--synth", str(args.synth),
                                                        *recipe["student"], f"student.synth_samples={n}"]))
    commands = []
    for name, words in stages:
        commands.append(f"dtlabel {shlex.join(words)} --out {out / name}")
        if not args.report_only and (rc := memory.run(name, out / name, [*words, "-q"])):
            return rc

    peaks = memory.read()
    scratch = summarised([row for seed in args.seeds
                        if (row := student_row(out / f"scratch-seed{seed}", peaks, f"scratch-seed{seed}"))])
    rows = []
    for n in sorted(args.sizes):
        runs = [row for seed in args.seeds
                if (row := student_row(out / f"student-n{n}-seed{seed}", peaks, f"student-n{n}-seed{seed}"))]
        rows.append({"n": n, "seeds": args.seeds, "runs": runs, "complete": len(runs) == len(args.seeds),
                     "summary": summarised(runs)})
    report = [f"`python benchmarks/synth_curve.py {shlex.join(argv if argv is not None else sys.argv[1:])}`", "",
              f"The demo's distilled student ({labels} labels, preset {args.preset}) on the first N samples of "
              f"{args.synth} ({made} made), seeds {args.seeds}; test mIoU on the real test split.", "",
              table(rows, scratch), "", "commands:", "", "```bash", *commands, "```"]
    (out / "results.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "scratch": scratch, "made": made}, indent=1) + "\n")
    draw(rows, scratch, out / "curve.png")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
