"""Does ``dtlabel suggest`` pick better images to label than chance? (CCP, the issue-19 protocol)

For each label draw ``D`` (``head.label_seed``): a head on ``N0`` labels (``--labels N0``); then,
for each chooser, ``K`` more images chosen from that head's candidate pool (the training pool
minus its labeled and validation images, masks unread) and a head on the ``N0 + K`` labels
(``label_ids=`` the chooser's ``label_ids.txt``). Choosers: ``typical`` and ``k-center``
(``suggest strategy=...``), ``k-center-wW`` (with ``uncertainty_weight=W``; ``k-center-w0`` is pure
k-center) and ``random-sS`` (``suggest strategy=random random_seed=S``: the same pool, the same
files). ``--rounds 2`` repeats the step from each chooser's own ``N0 + K`` head (the learning curve
``N0 -> N0 + K -> N0 + 2K``). Every head has the same recipe (``--preset``, the head's defaults),
is selected on its own validation slice and scored on the test split.

Each stage is an ordinary ``dtlabel`` command with its own run folder under ``--out``
(``head-<N>-d<D>[-<chooser>]``, ``pick-<N>-d<D>-<chooser>``), printed before it runs; a stage whose
folder holds ``run.json`` is skipped and an unfinished one continues with ``--resume``. Two
instances may share ``--out`` if they run different choosers or draws once the ``N0`` heads exist.
At the end it prints (and writes to ``OUT/suggest-vs-random.md``) the test mIoU of every finished
head and, per draw, the paired difference of each strategy against the mean of the random draws::

    OMP_NUM_THREADS=1 python benchmarks/suggest_vs_random.py --data-root PATH/ccp --draws 0 1 2 \\
        --choosers typical k-center random-s0 random-s1 random-s2 --out runs/suggest-vs-random
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages import done, run_stage  # noqa: E402


def _miou(folder: Path) -> float | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text())["miou"] if done(folder) and path.is_file() else None


def _chooser_words(chooser: str) -> list[str]:
    if chooser in ("typical", "k-center"):
        return [f"strategy={chooser}"]
    if chooser.startswith("k-center-w"):
        try:
            return ["strategy=k-center", f"uncertainty_weight={float(chooser[10:])}"]
        except ValueError:
            pass
    if chooser.startswith("random-s") and chooser[8:].isdigit():
        return ["strategy=random", f"random_seed={int(chooser[8:])}"]
    raise SystemExit(f"--choosers {chooser}: use typical, k-center, k-center-wW (W a number) or random-sS (S an integer)")


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def tables(out: Path, n0: int, k: int, rounds: int, draws: list[int], choosers: list[str]) -> str:
    """The markdown of every finished head: one row per (draw, chooser), one column per label count;
    then, per draw at ``N0 + K``, each strategy minus the mean of the random choosers (paired by draw)."""
    ns = [n0 + r * k for r in range(rounds + 1)]
    lines = [f"test mIoU (%) by number of labels; N = {n0} is the draw's starting head\n",
             "| draw | chooser | " + " | ".join(f"N = {n}" for n in ns) + " |", "|---" * (len(ns) + 2) + "|"]
    for d in draws:
        start = _miou(out / f"head-{n0}-d{d}")
        for c in choosers:
            vals = [start] + [_miou(out / f"head-{n}-d{d}-{c}") for n in ns[1:]]
            if any(v is not None for v in vals[1:]):
                lines.append(f"| {d} | {c} | " + " | ".join(_fmt(v) for v in vals) + " |")
    n1 = ns[1]
    diffs: dict[str, list[float]] = {}
    rows = ["", f"N = {n1}: each ranking against random, paired by draw\n",
            "| draw | chooser | mIoU | random (mean of seeds) | random seeds | chooser - random |",
            "|---|---|---|---|---|---|"]
    for d in draws:
        rs = [v for c in choosers if c.startswith("random") and (v := _miou(out / f"head-{n1}-d{d}-{c}")) is not None]
        for c in [c for c in choosers if not c.startswith("random")]:
            s = _miou(out / f"head-{n1}-d{d}-{c}")
            if s is None or not rs:
                continue
            r = statistics.mean(rs)
            diffs.setdefault(c, []).append(s - r)
            rows.append(f"| {d} | {c} | {s:.1f} | {r:.1f} | {', '.join(f'{v:.1f}' for v in rs)} | {s - r:+.1f} |")
    rows.append("")
    for c, v in diffs.items():
        sd = f", std {statistics.stdev(v):.1f}" if len(v) > 1 else ""
        rows.append(f"- {c}: mean paired difference over {len(v)} draw(s) {statistics.mean(v):+.1f}{sd}")
    if diffs:
        lines += rows
    return "\n".join(lines) + "\n"


def curve_plot(path: Path, out: Path, n0: int, k: int, rounds: int, draws: list[int], choosers: list[str],
               data: str) -> None:
    """Test mIoU against the number of labels, one line per (draw, chooser) with two finished rounds
    or more (the learning curve); written atomically by dtlabel.report."""
    from dtlabel.report import save_curve

    ns = [n0 + r * k for r in range(rounds + 1)]
    series = {}
    for d in draws:
        for c in choosers:
            pts = [(n0, _miou(out / f"head-{n0}-d{d}"))] + [(n, _miou(out / f"head-{n}-d{d}-{c}")) for n in ns[1:]]
            pts = [(n, v) for n, v in pts if v is not None]
            if len(pts) >= 3:
                series[f"draw {d}, {c}"] = ([n for n, _ in pts], [v for _, v in pts])
    if series:
        save_curve(path, series, "labeled images", "test mIoU (%)", title=f"choosing the images to label: data={data}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="the prepared CCP folder (datasets/ccp)")
    p.add_argument("--data", default="ccp")
    p.add_argument("--teacher", default="models/ccp")
    p.add_argument("--start", type=int, default=10, help="N0: labels of each draw's first head")
    p.add_argument("--add", type=int, default=15, help="K: images each chooser adds per round")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--choosers", nargs="+", default=["typical", "k-center", "random-s0", "random-s1", "random-s2"])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default="runs/suggest-vs-random")
    p.add_argument("--png", help="also draw the learning curves (draws with --rounds 2 or more) to this file")
    p.add_argument("--table-only", action="store_true", help="print the table of what is finished, run nothing")
    p.add_argument("overrides", nargs="*", help="key=value for every stage")
    args = p.parse_args(argv)
    for c in args.choosers:
        _chooser_words(c)
    out, n0, k = Path(args.out), args.start, args.add
    common = ["--preset", args.preset, f"data={args.data}", f"data.root={args.data_root}", *args.overrides]

    def stage(folder: Path, words: list[str]) -> int:
        return run_stage(folder, [*words, *common])

    for d in [] if args.table_only else args.draws:
        draw = [f"head.label_seed={d}"]
        if rc := stage(out / f"head-{n0}-d{d}", ["train-head", "--labels", str(n0), "--teacher", args.teacher, *draw]):
            return rc
        for c in args.choosers:
            base = out / f"head-{n0}-d{d}"
            for r in range(1, args.rounds + 1):
                n = n0 + r * k
                pick, head = out / f"pick-{n}-d{d}-{c}", out / f"head-{n}-d{d}-{c}"
                if rc := stage(pick, ["suggest", "--head", str(base), "--n", str(k), *_chooser_words(c)]):
                    return rc
                if rc := stage(head, ["train-head", f"label_ids={pick / 'label_ids.txt'}", "--teacher", args.teacher,
                                      *draw]):
                    return rc
                base = head
    body = tables(out, n0, k, args.rounds, args.draws, args.choosers)
    print("\n" + body)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suggest-vs-random.md").write_text(body)
    if args.png:
        curve_plot(Path(args.png), out, n0, k, args.rounds, args.draws, args.choosers, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
