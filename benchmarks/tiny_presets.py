"""Wall time of every command's ``--preset tiny`` run alone on its default data (the README's promise:
seconds), each a fresh ``dtlabel`` process, chained where a command needs an earlier one's run.

Prints a markdown table for docs/RESULTS.md::

    python benchmarks/tiny_presets.py --out runs/tiny-presets
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/tiny-presets", help="folder of the runs (emptied first)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tiny = ["--preset", "tiny", "-q"]
    chain = [
        ("fit-teacher", ["fit-teacher", *tiny, "--out", out / "fit"]),
        ("pretrain", ["pretrain", *tiny, "--teacher", "models/default", "--out", out / "pretrain"]),
        ("train-head", ["train-head", *tiny, "--labels", "20", "--teacher", "models/default", "--out", out / "head"]),
        ("synthesize (the pool)", ["synthesize", *tiny, "--teacher", "models/default", "--head", out / "head",
                                   "--out", out / "synth"]),
        ("synthesize --n 8 (sampled)", ["synthesize", *tiny, "--n", "8", "--teacher", "models/default",
                                        "--head", out / "head", "--out", out / "sampled"]),
        ("train-student --labels 20", ["train-student", *tiny, "--labels", "20", "--out", out / "scratch"]),
        ("train-student --synth --labels 20", ["train-student", *tiny, "--synth", out / "synth", "--labels", "20",
                                               "--out", out / "student"]),
        ("eval --student", ["eval", *tiny, "--student", out / "student", "--out", out / "eval"]),
        ("suggest --n 10", ["suggest", *tiny, "--n", "10", "--head", out / "head", "--out", out / "suggest"]),
        ("export --format coco", ["export", out / "synth", "--format", "coco", "--out", out / "export"]),
    ]
    print("| command (`--preset tiny`, default data) | wall time (s) |\n|---|---|")
    for name, argv in chain:
        t0 = time.time()
        done = subprocess.run([sys.executable, "-m", "dtlabel.cli", *map(str, argv)], capture_output=True, text=True)
        seconds = time.time() - t0
        if done.returncode != 0:
            print(f"| {name} | failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]} |")
            return 1
        print(f"| {name} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
