"""Markdown tables from finished run folders: test metrics of heads and students, class shares of synth sets.

Every ``train-head``, ``train-student`` and ``eval`` run folder holds a ``metrics.json`` (test mIoU,
pixel accuracy, per-class IoU); every ``synthesize`` run folder a ``manifest.json`` (class pixel
histogram, uncertainty-score quantiles). This script only reads them, so a table in docs/RESULTS.md
can be rebuilt from the runs at any time::

    python benchmarks/results_table.py "head, interpreter=runs/ccp/head-int-50" \\
        "scratch student=runs/ccp/scratch-50" [--png docs/ccp/n50.png] [--title "CCP, N = 50"]
    python benchmarks/results_table.py --synth "sampled=runs/ccp/synth-sampled" \\
        "real images=runs/ccp/synth-img-50" --real data=ccp data.root=PATH/ccp

    python benchmarks/results_table.py --draws "scratch student=runs/ccp/scratch-50,runs/ccp/scratch-50-s1" \
        "student=runs/ccp/student-pr-50,runs/ccp/student-pr-50-s1" --baseline "scratch student"

``--recipes LABEL=MODEL_RUN+RUN+...`` gives each recipe's validation and test mIoU and the CPU minutes of
all its runs (the model's and those it was made from) summed.

``--draws`` reads comma-separated run folders per row (one per label draw) and gives the test mIoU
of each draw, the mean and the sample standard deviation, and with ``--baseline`` each row's gain
over the baseline row, draw by draw (paired: the same labels) and on the mean.
``--real`` adds the labeled pool's class pixel share (as ``dtlabel data check`` prints it) as the
reference row of the synth table; the words after it are ``data=...`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _pairs(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"{item!r}: expected LABEL=RUN_FOLDER")
        out.append((label, Path(path)))
    return out


def _read(path: Path, name: str) -> dict[str, Any]:
    f = path / name
    if not (path / "run.json").is_file():
        raise SystemExit(f"{path}: unfinished run (no run.json)")
    if not f.is_file():
        raise SystemExit(f"{path}: no {name}")
    return json.loads(f.read_text())


def _minutes(path: Path) -> str:
    run = json.loads((path / "run.json").read_text())
    sec = run.get("seconds")
    return f"{sec / 60:.0f}" if isinstance(sec, (int, float)) else "-"


def metrics_table(rows: list[tuple[str, Path]]) -> tuple[str, list[tuple[str, dict[str, Any]]], list[str]]:
    from dtlabel.report import results_table

    loaded = [(label, _read(path, "metrics.json")) for label, path in rows]
    names = list((loaded[0][1].get("per_class_iou") or {}).keys())
    table = results_table(loaded, names)
    lines = table.splitlines()
    # one more column: the run's wall time
    lines[0] += " minutes |"
    lines[1] += "---|"
    for k, (_, path) in enumerate(rows):
        lines[2 + k] += f" {_minutes(path)} |"
    return "\n".join(lines), loaded, names


def draws_table(rows: list[tuple[str, list[Path]]], baseline: str | None = None) -> str:
    """mIoU per label draw, mean and spread; with ``baseline`` the paired gain over that row."""
    import statistics

    miou = {label: [_read(p, "metrics.json")["miou"] for p in paths] for label, paths in rows}
    n = max(len(v) for v in miou.values())
    if baseline is not None and baseline not in miou:
        raise SystemExit(f"--baseline {baseline!r}: not one of the rows ({', '.join(miou)})")

    def sd(v: list[float]) -> str:
        return f"{statistics.stdev(v):.1f}" if len(v) > 1 else "-"

    head = "| model | " + " | ".join(f"draw {k}" for k in range(n)) + " | mean | std |"
    if baseline:
        head += f" gain over {baseline}, per draw | mean gain | std |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for label, v in miou.items():
        cells = [f"{x:.1f}" for x in v] + ["-"] * (n - len(v))
        line = f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(v):.1f} | {sd(v)} |"
        if baseline:
            base = miou[baseline]
            gains = [a - b for a, b in zip(v, base)]
            if label == baseline or not gains:
                line += " - | - | - |"
            else:
                line += " " + ", ".join(f"{g:+.1f}" for g in gains) + f" | {statistics.mean(gains):+.1f} | {sd(gains)} |"
        lines.append(line)
    return "\n".join(lines)


def _run_seconds(path: Path) -> float:
    """A run's wall time across sessions: run.json's seconds (this session only, if it was resumed) or
    the training time its metrics.jsonl lines carry over resumes (both stages of a two-stage student),
    whichever is larger."""
    own = float(json.loads((path / "run.json").read_text()).get("seconds") or 0)
    trained = 0.0
    for metrics in (path / "metrics.jsonl", path / "stage1" / "metrics.jsonl"):
        if metrics.is_file():
            times = [json.loads(x).get("elapsed_s") or 0 for x in metrics.read_text().splitlines() if x.strip()]
            trained += max(times, default=0)
    return max(own, trained)


def recipes_table(rows: list[tuple[str, list[Path]]], baseline: str | None = None) -> str:
    """One row per recipe: ``paths[0]`` is the model scored (validation and test mIoU from its
    metrics.json), and the CPU minutes are the wall time of every run of its chain summed (``paths``:
    the model's run and the runs it was made from: head, synthesize, labellers, ...)."""
    rows_out = []
    for label, paths in rows:
        m = _read(paths[0], "metrics.json")
        seconds = sum(_run_seconds(p) for p in paths)
        rows_out.append((label, (m.get("val") or {}).get("miou"), m["miou"], seconds / 60))
    base = next((r for r in rows_out if r[0] == baseline), None)
    if baseline is not None and base is None:
        raise SystemExit(f"--baseline {baseline!r}: not one of the recipes")
    head = "| recipe | validation mIoU | test mIoU |" + (" test gain over baseline |" if base else "") + " CPU minutes |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for label, val, test, minutes in rows_out:
        gain = (" - |" if label == baseline else f" {test - base[2]:+.1f} |") if base else ""
        lines.append(f"| {label} | {val if val is not None else '-'} | {test:.1f} |{gain} {minutes:.0f} |")
    return "\n".join(lines)


def synth_table(rows: list[tuple[str, Path]], real: list[str] | None) -> str:
    manifests = [(label, _read(path, "manifest.json")) for label, path in rows]
    names = list(manifests[0][1]["class_names"])
    lines = ["| pixel share (%) | samples | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    if real is not None:
        from dtlabel.config import compose
        from dtlabel.data import build_data
        from dtlabel.data.check import check_bundle

        cfg = compose("data-check", real)
        bundle = build_data(cfg.data)
        rep = check_bundle(bundle, progress=False)
        lines.append(f"| real labels ({bundle.name}) | {rep.labeled} | "
                     + " | ".join(f"{100 * s:.2f}" for s in rep.pixel_share) + " |")
    for label, m in manifests:
        share = m.get("class_pixel_share") or []
        lines.append(f"| {label} | {m.get('count')} | " + " | ".join(f"{100 * s:.2f}" for s in share) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", help="LABEL=RUN_FOLDER of train-head / train-student / eval runs")
    p.add_argument("--synth", nargs="+", metavar="LABEL=RUN", help="synthesize run folders (class share table)")
    p.add_argument("--real", nargs="*", metavar="KEY=VALUE", help="data overrides of the real reference row")
    p.add_argument("--png", help="also write a per-class IoU bar chart of the metrics table")
    p.add_argument("--title", default="test IoU per class")
    p.add_argument("--draws", nargs="+", metavar="LABEL=RUN0,RUN1,...", help="rows over label draws (mean, std)")
    p.add_argument("--baseline", help="--draws / --recipes: the row the others are compared with")
    p.add_argument("--recipes", nargs="+", metavar="LABEL=MODEL_RUN[+RUN...]",
                   help="recipes: validation and test mIoU of the model run, CPU minutes of all the runs summed")
    args = p.parse_args(argv)
    if args.recipes:
        print(recipes_table([(label, [Path(x) for x in str(path).split("+")]) for label, path in _pairs(args.recipes)],
                            args.baseline))
    if args.runs:
        table, loaded, names = metrics_table(_pairs(args.runs))
        print(table)
        if args.png:
            from dtlabel.report import results_plot

            Path(args.png).parent.mkdir(parents=True, exist_ok=True)
            results_plot(Path(args.png), loaded, names, title=args.title)
    if args.synth:
        if args.runs:
            print()
        print(synth_table(_pairs(args.synth), args.real))
    if args.draws:
        rows = [(label, [Path(x) for x in str(path).split(",") if x]) for label, path in _pairs(args.draws)]
        if args.runs or args.synth:
            print()
        print(draws_table(rows, args.baseline))
    if not args.runs and not args.synth and not args.draws and not args.recipes:
        p.error("give run folders, --synth run folders, --draws rows and/or --recipes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
