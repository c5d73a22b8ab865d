"""Teacher levers one at a time: head mIoU on a held-out slice of the labeled pool for variants of one run.

Each ``--variant NAME [key=value ...]`` is a ``dtlabel train-head`` run with those overrides on top of
the common ones (e.g. ``teacher.timesteps=[10]``, ``teacher.noise_draws=2``,
``'teacher.blocks=[mid_block,up_blocks.0,up_blocks.1,up_blocks.2,up_blocks.3]'``, or another
``--teacher`` with ``teacher=DIR``). The heads are trained on N labels drawn from ``--train`` and scored
on ``--holdout`` (``data.splits.train`` / ``data.splits.test`` overrides), never on the test split. The
first variant is the reference: the table gives every variant's gain over it.

Run folders are ``OUT/<NAME>``; finished ones are skipped and unfinished ones resumed, so several
invocations (one per core) can share ``--out``, and a last one with every variant prints the table::

    OMP_NUM_THREADS=1 python benchmarks/head_levers.py --teacher models/ccp --labels 10 \\
        --train 0001-0704 --holdout 0705-0804 --out runs/levers-10 data=ccp data.root=PATH/ccp \\
        --variant base --variant t10 "teacher.timesteps=[10]" --variant draws2 teacher.noise_draws=2
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="teacher folder of every variant (a variant may pass teacher=DIR)")
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--train", required=True, help="id range of the pool the labels come from")
    p.add_argument("--holdout", required=True, help="id range the heads are scored on (part of the labeled pool)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default="runs/levers")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [key=value ...]")
    p.add_argument("--only-table", action="store_true", help="train nothing; tabulate the finished variants")
    p.add_argument("--append", metavar="FILE", help="also append the table to FILE")
    p.add_argument("overrides", nargs="*", help="key=value for every variant")
    args = p.parse_args(argv)

    out = Path(args.out)
    rows = []
    for name, *extra in args.variant:
        teacher = args.teacher
        rest = []
        for kv in extra:
            if kv.startswith("teacher="):
                teacher = kv.split("=", 1)[1]
            else:
                rest.append(kv)
        run = out / name
        if not (run / "run.json").is_file():
            if args.only_table:
                continue
            cmd = [sys.executable, "-m", "dtlabel.cli", "train-head", "--labels", str(args.labels), "--teacher", teacher,
                   "--preset", args.preset, f"data.splits.train={args.train}", f"data.splits.test={args.holdout}",
                   *args.overrides, *rest, "--out", str(run), "-q"]
            if run.exists():
                cmd.append("--resume")
            print("+ dtlabel", shlex.join(cmd[3:]), flush=True)
            subprocess.run(cmd, check=True)
        m = json.loads((run / "metrics.json").read_text())
        sec = json.loads((run / "run.json").read_text()).get("seconds")
        rows.append((name, " ".join(extra) or "(reference)", m, sec))
        print(f"{name}: held-out mIoU {m['miou']:.2f}", flush=True)
    if not rows:
        print("no finished variants")
        return 0

    names = list(rows[0][2]["per_class_iou"])
    ref = rows[0][2]["miou"]
    lines = [f"Head mIoU on held-out ids {args.holdout} (N = {args.labels} labels from {args.train}), "
             f"teacher `{Path(args.teacher).name}`, reference `{rows[0][0]}`.", "",
             "| variant | overrides | mIoU | gain | " + " | ".join(names) + " | minutes |",
             "|---" * (5 + len(names)) + "|"]
    for name, extra, m, sec in rows:
        per = " | ".join(f"{m['per_class_iou'][c]:.1f}" if m["per_class_iou"][c] is not None else "-" for c in names)
        mins = f"{sec / 60:.0f}" if isinstance(sec, (int, float)) else "-"
        lines.append(f"| {name} | `{extra}` | {m['miou']:.1f} | {m['miou'] - ref:+.1f} | {per} | {mins} |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.md").write_text(table + "\n")
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
