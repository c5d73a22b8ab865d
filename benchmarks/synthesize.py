"""synthesize benchmarks: overhead over bare teacher sampling, and 2 ranks over 1 rank.

1. ``dtlabel synthesize`` (sampling, encoded features, head, PNG/tar writing in the background
   thread, manifest) against bare ``Teacher.sample(..., return_features=False)`` with the same sampler,
   steps, batch and number of images. Two synthesize figures: the whole command (model loading,
   preview, manifest included) and its sampling loop alone (``samples_per_second`` of run.json).
2. ``torchrun --nproc_per_node 2`` over ``--nproc_per_node 1``, same command, wall-clock throughput.

    python benchmarks/synthesize.py --preset cpu --size 64 64 --n 32 --batch 8 --steps 10 --threads 1

The teacher is the fit-teacher UNet of ``--preset`` with random weights and the head a random
interpreter of the train-head preset: timing does not depend on the weights. Prints markdown rows
for docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from dtlabel.cli import main as cli_main  # noqa: E402
from dtlabel.config import compose  # noqa: E402
from dtlabel.heads import create_head  # noqa: E402
from dtlabel.teachers import teacher_from_config  # noqa: E402
from dtlabel.teachers.fit import build_unet  # noqa: E402


def build_models(root: Path, preset: str, size: tuple[int, int]) -> tuple[Path, Path]:
    from diffusers import DDPMPipeline, DDPMScheduler

    from dtlabel.heads.task import head_kwargs

    fit = compose("fit_teacher", [f"preset={preset}"]).fit
    torch.manual_seed(0)
    DDPMPipeline(unet=build_unet(fit.model, size).eval(), scheduler=DDPMScheduler()).save_pretrained(root / "teacher")
    hcfg = compose("train_head", [f"preset={preset}"])
    teacher = teacher_from_config(root / "teacher", hcfg.teacher)
    head = create_head("interpreter", teacher.feature_spec, 8, **head_kwargs(hcfg.head, "interpreter"))
    head.save(root / "head" / "head", teacher_hash=teacher.teacher_hash(), class_names=[f"c{i}" for i in range(8)],
              teacher=teacher.describe())
    (root / "head" / "run.json").write_text(json.dumps({"command": "train-head"}))
    return root / "teacher", root / "head"


def synth_args(preset: str, n: int, teacher: Path, head: Path, batch: int, steps: int, out: Path) -> list[str]:
    return ["synthesize", "--preset", preset, "--num-samples", str(n), "--teacher", str(teacher), "--head", str(head),
            "--device", "cpu", "--out", str(out), "-q", f"synth.batch_size={batch}", f"synth.sample_steps={steps}",
            "synth.preview=0", "amp=off"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", help="UNet of fit-teacher / head of train-head at this preset")
    ap.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (per rank under torchrun)")
    ap.add_argument("--skip-ranks", action="store_true", help="skip the torchrun comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (args.size[0], args.size[1])
    print(f"torch {torch.__version__}, {args.threads} thread(s) per process, {os.cpu_count()} CPU(s)\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tdir, hdir = build_models(root, args.preset, size)
        tcfg = compose("synthesize", [f"preset={args.preset}"]).teacher
        teacher = teacher_from_config(tdir, tcfg, amp="off")
        teacher.sample(min(2, args.n), seed=0, steps=2, batch_size=2, return_features=False)  # warm-up
        t0 = time.perf_counter()
        teacher.sample(args.n, seed=0, steps=args.steps, batch_size=args.batch, return_features=False)
        bare = time.perf_counter() - t0

        t0 = time.perf_counter()
        assert cli_main(synth_args(args.preset, args.n, tdir, hdir, args.batch, args.steps, root / "s1")) == 0
        whole = time.perf_counter() - t0
        desc = json.loads((root / "s1" / "run.json").read_text())
        loop = args.n / desc["samples_per_second"]
        label = f"{args.preset} UNet {size[0]}x{size[1]}, {teacher.sampler} {args.steps} steps, batch {args.batch}, n={args.n}"
        print("| setting | bare sampling | synthesize loop | ratio | whole command | ratio | kB/sample |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {label} | {bare:.1f} s | {loop:.1f} s | {loop / bare:.2f} | {whole:.1f} s | {whole / bare:.2f} "
              f"| {desc['bytes_per_sample'] / 1e3:.1f} |", flush=True)
        if args.skip_ranks:
            return
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        walls = {}
        for k in (1, 2):
            out = root / f"ddp{k}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(k), "--master_port",
                   str(29600 + k), "-m", "dtlabel.cli", *synth_args(args.preset, args.n, tdir, hdir, args.batch,
                                                                  args.steps, out)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            walls[k] = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
        print("\n| setting | 1 rank | 2 ranks | throughput 2 / 1 |\n|---|---|---|---|")
        print(f"| {label}, torchrun, {args.threads} thread(s)/rank | {args.n / walls[1]:.2f} samples/s "
              f"({walls[1]:.1f} s) | {args.n / walls[2]:.2f} samples/s ({walls[2]:.1f} s) | {walls[1] / walls[2]:.2f} |")


if __name__ == "__main__":
    main()
