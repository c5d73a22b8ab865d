"""Feature quality against teacher training time: head mIoU at several checkpoints of one fit-teacher run.

For each kept checkpoint (``fit.keep_every``, plus the latest ones) the EMA weights are exported as
a diffusers folder and a head is trained on N labels with ``dtlabel train-head``. The head is
scored on a held-out slice of the labeled *training* pool, never on the test split: the script
passes ``data.splits.train`` / ``data.splits.test`` overrides that replace the data set's splits
for these runs only. The result is a table (steps, training hours, mIoU) and a PNG curve, so the
curve and not a guess says how long a teacher should train.

Usage (CCP, 50 labels from 0001-0704, scored on 0705-0804)::

    OMP_NUM_THREADS=1 python benchmarks/teacher_curve.py --run runs/ccp-teacher --labels 50 \\
        --train 0001-0704 --holdout 0705-0804 --out runs/teacher-curve \\
        data=ccp data.root=PATH/ccp [head.kind=mlp-ensemble] [--steps 500 1000 1500] [--append docs/RESULTS.md]

Extra ``key=value`` arguments go to every ``train-head`` run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _hours_at(run: Path, step: int) -> float | None:
    """Training wall time (hours) at ``step`` from the run's metrics.jsonl (None if unknown)."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return None
    best = None
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            best = rec.get("elapsed_s")
    return None if best is None else best / 3600


def main(argv: list[str] | None = None) -> int:
    from dtlabel.teachers.fit import checkpoint_steps, export_checkpoint, read_architecture

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="fit-teacher run folder with checkpoints")
    p.add_argument("--labels", type=int, default=50)
    p.add_argument("--train", required=True, help="id range of the training pool the labels come from")
    p.add_argument("--holdout", required=True, help="id range the heads are scored on (part of the labeled pool)")
    p.add_argument("--steps", type=int, nargs="*", help="checkpoint steps (default: all kept)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default="runs/teacher-curve")
    p.add_argument("--append", metavar="FILE", help="also append the table to FILE")
    p.add_argument("--init-hours", type=float, default=None,
                   help="fit.init_from runs: training hours of the initial teacher (added to the run's)")
    p.add_argument("--no-init-point", action="store_true", help="fit.init_from runs: skip the initial teacher's point")
    p.add_argument("overrides", nargs="*", help="train-head overrides key=value")
    args = p.parse_args(argv)

    run, out = Path(args.run), Path(args.out)
    steps = args.steps or checkpoint_steps(run)
    if not steps:
        raise SystemExit(f"{run}: no checkpoints")
    arch = read_architecture(run)
    offset = arch["init_steps"] if arch else 0
    points: list[tuple[int, Path | None]] = [(s, None) for s in steps]  # (run step, teacher folder or None = export)
    if arch and not args.no_init_point:
        points.insert(0, (0, Path(arch["init_from"])))
    rows = []
    for step, given in points:
        total = offset + step
        teacher = given or out / f"teacher-step-{total}"
        if given is None and not (teacher / "model_index.json").is_file():
            export_checkpoint(run, step, teacher)
        head = out / f"head-step-{total}"
        cmd = [sys.executable, "-m", "dtlabel.cli", "train-head", "--labels", str(args.labels), "--teacher", str(teacher),
               "--preset", args.preset, f"data.splits.train={args.train}", f"data.splits.test={args.holdout}",
               *args.overrides, "--out", str(head), "-q"]
        if not (head / "run.json").is_file():
            if head.exists():
                cmd.append("--resume")
            print("+", shlex.join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True)
        m = json.loads((head / "metrics.json").read_text())
        hours = _hours_at(run, step) if step else 0.0
        if arch:
            hours = None if hours is None or args.init_hours is None else hours + args.init_hours
        rows.append({"step": total, "hours": hours, "miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
                     "per_class_iou": m["per_class_iou"], "teacher": str(teacher)})
        print(f"step {total}: held-out mIoU {m['miou']:.2f}", flush=True)

    names = list(rows[0]["per_class_iou"])
    lines = [f"Head mIoU on held-out ids {args.holdout} (labels drawn from {args.train}), N = {args.labels}, "
             f"teacher run `{run.name}`.", "",
             "| teacher step | training hours | mIoU | pixel acc | " + " | ".join(names) + " |",
             "|---" * (4 + len(names)) + "|"]
    for r in rows:
        hours = f"{r['hours']:.2f}" if r["hours"] is not None else "-"
        per = " | ".join(f"{r['per_class_iou'][c]:.1f}" if r["per_class_iou"][c] is not None else "-" for c in names)
        lines.append(f"| {r['step']} | {hours} | {r['miou']:.1f} | {r['pixel_accuracy']:.1f} | {per} |")
    shown = ["python", "benchmarks/teacher_curve.py", *(argv if argv is not None else sys.argv[1:])]
    lines += ["", f"Command: `{shlex.join(shown)}`"]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=2))
    (out / "curve.md").write_text(table + "\n")
    _plot(out / "curve.png", rows)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")
    return 0


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot([r["step"] for r in rows], [r["miou"] for r in rows], "o-")
    ax.set_xlabel("teacher training steps")
    ax.set_ylabel("held-out head mIoU (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
