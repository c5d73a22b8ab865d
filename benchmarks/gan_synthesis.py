"""Synthesis throughput: a GAN teacher's one generator pass against a DDPM teacher's denoising loop
(issue 36, item 6).

Both teachers draw ``--n`` images *with their features* (``Teacher.sample``, what ``synthesize
--n`` spends its time on before the head and the writer) at the same size and batch, in one process,
alternating for ``--rounds`` rounds (the machine is shared and noisy: the ratio of one run is the
figure). The GAN is the fit-teacher cpu preset's generator (``fit.gan``) with random weights, the
DDPM ``--ddpm`` (default: the shipped ``models/default``) with DDIM at ``--steps``: timing does not
depend on the weights. Prints a markdown table for docs/RESULTS.md.

    OMP_NUM_THREADS=1 python benchmarks/gan_synthesis.py --n 64 --batch 16 --steps 50 20 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from dtlabel.config import compose  # noqa: E402
from dtlabel.teachers import load_teacher  # noqa: E402
from dtlabel.teachers.gan import save_gan  # noqa: E402
from dtlabel.teachers.gan_fit import build_gan  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ddpm", default="models/default")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[50])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    ddpm = load_teacher(args.ddpm, amp="off")
    size = ddpm.image_size
    fit = compose("fit_teacher", ["preset=cpu", "fit.family=gan"]).fit
    torch.manual_seed(0)
    generator, _ = build_gan(fit, size)
    with tempfile.TemporaryDirectory() as tmp:
        gan = load_teacher(save_gan(Path(tmp) / "gan", generator.eval(), None, {"trained_steps": 0}), amp="off")
        runs = {"gan": lambda: gan.sample(args.n, seed=0, batch_size=args.batch)}
        for steps in args.steps:
            runs[f"ddpm-{steps}"] = lambda s=steps: ddpm.sample(args.n, seed=0, steps=s, batch_size=args.batch)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, draw in runs.items():
                start = time.perf_counter()
                draw()
                times[name].append(time.perf_counter() - start)
    gan_rate = args.n / statistics.median(times["gan"])
    params = {"gan": sum(p.numel() for p in generator.parameters()), "ddpm": sum(p.numel() for p in ddpm.parameters())}
    print(f"{args.n} samples at {size[0]}x{size[1]} with features, batch {args.batch}, {torch.get_num_threads()} "
          f"thread(s), median of {args.rounds} rounds")
    print("| teacher | parameters | samples/s | GAN's speed-up |\n|---|---:|---:|---:|")
    for name, t in times.items():
        rate = args.n / statistics.median(t)
        kind = "gan" if name == "gan" else "ddpm"
        label = "GAN, one generator pass (cpu preset)" if name == "gan" else f"DDPM {args.ddpm}, DDIM {name[5:]} steps"
        print(f"| {label} | {params[kind] / 1e6:.2f}M | {rate:.2f} | {gan_rate / rate:.1f}x |")


if __name__ == "__main__":
    main()
