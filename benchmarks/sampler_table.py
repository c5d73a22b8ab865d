"""Which sampler, and how many steps: chosen by what the labels are worth, not by how the images look.

For each ``SAMPLER:STEPS`` of ``--grid`` (DDIM and DPM-Solver++ at 10, 20 and 50 steps by default) it
runs ``synthesize --n N`` sampled pairs from the teacher (``models/default``) labelled by the demo's
head, then the demo's distilled student on them (``train-student --synth S --labels L``, one run per
``--student-seeds`` seed, the labels fixed), and scores each student on the *real* test split. Every
setting samples from the same seeds, so the rows differ by the sampler alone. The head and the scratch
student (the same recipe without pseudo-labels) are the table's two reference rows.

Every stage is an ordinary dtlabel command in a folder of its own (``benchmarks/stages.py``): a
finished stage is skipped, an unfinished one continues with ``--resume``, so the table (hours on one
CPU core: about 0.6 s per sample at 20 steps) fills over several sittings. The CPU seconds of each
stage (its child process, all threads, summed over sittings in ``OUT/cpu.json``) give samples per CPU
second, the rate that holds on a machine shared with other jobs; a synthesize stage's rate counts the
samples of the sittings the ledger timed (``OUT/samples.json``), so a sitting lost to a kill biases
nothing. Two instances may share ``--out`` on disjoint ``--grid`` settings (one core each): the ledger
merges under a lock, and a stage both reach is refused to the second by dtlabel's run-folder lock.

Usage::

    python benchmarks/sampler_table.py --out runs/sampler --n 5000 [--grid ddim:10,20,50 dpm:10,20,50] \\
        [--student-seeds 0 1] [--preset cpu] [--synth-nproc 2] [--only-synth | --report-only] [key=value ...]

(``synth.*`` overrides reach the synthesize stages only, ``student.*`` the students, ``head.*`` the
head, ``teacher.*`` the head and synthesize; any other key every stage.)

Writes ``OUT/results.md`` (the table, the exact commands, the chosen setting: the fastest within
``--within`` test mIoU of the best) and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

from stages import done, run_stage, samples_in_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def parse_grid(words: list[str]) -> list[tuple[str, int]]:
    """``["ddim:10,20", "dpm:10"]`` -> ``[("ddim", 10), ("ddim", 20), ("dpm", 10)]``."""
    grid = []
    for word in words:
        sampler, _, steps = word.partition(":")
        if sampler not in ("ddim", "ddpm", "dpm") or not steps:
            raise SystemExit(f"--grid {word}: expected SAMPLER:STEPS[,STEPS...] with SAMPLER ddim, ddpm or dpm")
        grid += [(sampler, int(s)) for s in steps.split(",")]
    return grid


# which stages an override of a config section reaches (any other override reaches every stage)
SECTIONS = {"head.": ("train-head",), "synth.": ("synthesize",), "teacher.": ("train-head", "synthesize"),
            "student.": ("train-student",)}


def routed(command: str, overrides: list[str]) -> list[str]:
    """The overrides that apply to ``command``: a ``synth.*`` key only to synthesize, and so on."""
    keep = []
    for ov in overrides:
        section = next((s for s in SECTIONS if ov.startswith(s)), None)
        if section is None or command in SECTIONS[section]:
            keep.append(ov)
    return keep


def demo_recipe(preset: str) -> tuple[dict[str, list[str]], str]:
    """The demo's per-stage overrides (configs/demo/<preset>.yaml) with its data arguments, and its labels."""
    from dtlabel.config import compose

    cfg = compose("demo", [f"preset={preset}"])
    dc = cfg.demo
    data = ["data=default", f"data.size=[{int(cfg.data.size[0])},{int(cfg.data.size[1])}]", *map(str, dc.data or [])]
    recipe = {key: list(map(str, dc.get(key) or [])) for key in ("head", "synth", "students", "student")}
    return {"data": data, **recipe}, str(int(dc.labels))


class CpuLedger:
    """CPU seconds (user + system of the child processes) of each stage, summed over the sittings it timed,
    and for a synthesize stage the samples those sittings wrote (``samples.json``)."""

    def __init__(self, out: Path) -> None:
        self.path, self.samples_path = out / "cpu.json", out / "samples.json"
        self.seconds: dict[str, float] = self._read(self.path)
        self.samples: dict[str, int] = self._read(self.samples_path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, folder: Path, words: list[str], nproc: int = 1) -> int:
        """Run one stage (``nproc`` ranks under torchrun, whose waited-for ranks count as its children)."""
        if done(folder):
            return 0
        before, written = resource.getrusage(resource.RUSAGE_CHILDREN), samples_in_shards(folder)
        rc = run_stage(folder, words, nproc)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        self._add(name, spent, samples_in_shards(folder) - written if words[0] == "synthesize" else None)
        return rc

    def _add(self, name: str, seconds: float, samples: int | None) -> None:
        """Add one sitting to the files as they are now (another instance may have written them since)."""
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            self.seconds, self.samples = self._read(self.path), self._read(self.samples_path)
            self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 1)
            updates = [(self.path, self.seconds)]
            if samples is not None:
                self.samples[name] = self.samples.get(name, 0) + samples
                updates.append((self.samples_path, self.samples))
            for path, values in updates:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(values, indent=1) + "\n")
                os.replace(tmp, path)

    def per_cpu_s(self, name: str, count: int) -> float | None:
        """Samples per CPU second of a finished synthesize stage; ``count`` where every sitting was timed
        (stages finished before the sample count was kept)."""
        cpu = self.seconds.get(name)
        return round(self.samples.get(name, count) / cpu, 3) if cpu else None


def test_miou(folder: Path) -> float:
    """The test mIoU of a finished head or student run folder (its ``run.json``)."""
    return float(json.loads((folder / "run.json").read_text())["test_miou"])


def table(rows: list[dict[str, Any]], refs: dict[str, float], within: float) -> tuple[str, dict[str, Any] | None]:
    """The markdown table and the chosen row: the most samples per CPU second within ``within`` of the best.

    No row is chosen until every row has its students (a partial table shows its figures, not a choice)."""
    scored = [r for r in rows if r.get("miou")]
    best = max((r["miou"] for r in scored), default=None)
    chosen = None
    if best is not None and len(scored) == len(rows):   # a choice among the rows finished so far would mislead
        near = [r for r in scored if r["miou"] >= best - within and r.get("per_cpu_s")]
        chosen = max(near, key=lambda r: r["per_cpu_s"]) if near else None
    lines = ["| sampler | steps | samples per CPU s | CPU s per 1k | samples/s (wall) | student test mIoU (each seed) "
             "| mean | vs best |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        each = ", ".join(f"{m:.2f}" for m in r.get("each", [])) or "-"
        mean = f"{r['miou']:.2f}" if r.get("miou") else "-"
        gap = f"{r['miou'] - best:+.2f}" if r.get("miou") and best is not None else "-"
        mark = " (chosen)" if r is chosen else ""
        per = f"{r['per_cpu_s']:.2f}" if r.get("per_cpu_s") else "-"
        per_1k = f"{1000 / r['per_cpu_s']:.0f}" if r.get("per_cpu_s") else "-"
        wall = f"{r['wall_rate']:.2f}" if r.get("wall_rate") else "-"
        lines.append(f"| {r['sampler']}{mark} | {r['steps']} | {per} | {per_1k} | {wall} | {each} | {mean} | {gap} |")
    for name, value in refs.items():
        lines.append(f"| {name} | - | - | - | - | - | {value:.2f} | {value - best:+.2f} |" if best is not None else
                     f"| {name} | - | - | - | - | - | {value:.2f} | - |")
    return "\n".join(lines), chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--teacher", default="models/default")
    p.add_argument("--n", type=int, default=5000, help="sampled pairs per setting")
    p.add_argument("--grid", nargs="+", default=["ddim:10,20,50", "dpm:10,20,50"])
    p.add_argument("--student-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="cpu", help="the demo preset whose head, synth and student recipes run")
    p.add_argument("--within", type=float, default=0.5, help="test mIoU a faster setting may lose and still be chosen")
    p.add_argument("--synth-nproc", type=int, default=1,
                   help="ranks of each synthesize stage (torchrun, one core each; samples per CPU s is unchanged)")
    p.add_argument("--only-synth", action="store_true", help="sample every setting, train no student yet")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table of the stages finished so far")
    p.add_argument("overrides", nargs="*", help="key=value for the stages whose config has the key's section")
    args = p.parse_args(argv)

    grid, (recipe, labels) = parse_grid(args.grid), demo_recipe(args.preset)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ledger = CpuLedger(out)
    data = recipe["data"]
    fixed_labels = ["head.label_seed=0"]
    student_base = ["train-student", "--labels", labels, *data, *recipe["students"], "student.label_seed=0"]
    stages: list[tuple[str, list[str]]] = [
        ("head", ["train-head", "--labels", labels, "--teacher", args.teacher, *data, *recipe["head"], *fixed_labels]),
        ("scratch", [*student_base, "--seed", str(args.student_seeds[0])]),
    ]
    # the cheapest settings first, each with its students, so a table cut short by a sitting has whole rows
    for sampler, steps in sorted(grid, key=lambda g: g[1]):
        key = f"{sampler}-{steps}"
        stages.append((f"synth-{key}", ["synthesize", "--num-samples", str(args.n), "--teacher", args.teacher, "--head",
                                        str(out / "head"), *data, *recipe["synth"], f"teacher.sampler={sampler}",
                                        f"synth.sample_steps={steps}"]))
        for seed in [] if args.only_synth else args.student_seeds:
            stages.append((f"student-{key}-seed{seed}", [*student_base, "--seed", str(seed), "--synth",
                                                         str(out / f"synth-{key}"), *recipe["student"]]))
    commands = []
    for name, words in stages:
        extra = routed(words[0], list(args.overrides))
        commands.append(f"dtlabel {shlex.join(words + extra)} --out {out / name}")
        nproc = args.synth_nproc if words[0] == "synthesize" else 1
        if not args.report_only and (rc := ledger.run(name, out / name, [*words, *extra, "-q"], nproc)):
            return rc

    rows = []
    for sampler, steps in grid:
        key, row = f"{sampler}-{steps}", {"sampler": sampler, "steps": steps}
        synth = out / f"synth-{key}"
        if done(synth):
            run = json.loads((synth / "run.json").read_text())
            row["wall_rate"] = run.get("samples_per_second")
            row["per_cpu_s"] = ledger.per_cpu_s(f"synth-{key}", int(run["count"]))
        each = [test_miou(out / f"student-{key}-seed{s}") for s in args.student_seeds
                if done(out / f"student-{key}-seed{s}")]
        if len(each) == len(args.student_seeds):
            row["each"], row["miou"] = each, round(sum(each) / len(each), 2)
        rows.append(row)
    refs = {name: test_miou(out / folder) for name, folder in (("head (reference)", "head"),
                                                                   ("scratch student (reference)", "scratch"))
            if done(out / folder)}
    text, chosen = table(rows, refs, args.within)
    report = [f"`python benchmarks/sampler_table.py {shlex.join(argv if argv is not None else sys.argv[1:])}`", "",
              f"{args.n} sampled pairs per setting from {args.teacher}, labelled by the demo's head ({labels} labels); "
              f"students: the demo's distilled recipe, seeds {args.student_seeds}; test mIoU on the real test split.",
              "", text, "",
              (f"chosen: {chosen['sampler']} at {chosen['steps']} steps (the most samples per CPU second within "
               f"{args.within} test mIoU of the best)") if chosen else "chosen: - (not every row is finished)",
              "", "commands:", "", "```bash", *commands, "```"]
    (out / "results.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "references": refs, "chosen": chosen,
                                                  "cpu_s": ledger.seconds}, indent=1) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
