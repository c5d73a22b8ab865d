"""What a teacher lever costs in training time: one fit-teacher step (forward + backward + AdamW) per variant.

The variants (UNet settings x image size) run interleaved, ``--repeats`` times each, on random
weights and images (timing does not depend on them), and the table gives the median step time and
its ratio to the first variant, so machine noise hits all variants alike. With the feature-quality
curve (benchmarks/teacher_curve.py: head mIoU against training steps) this says how many hours a
resolution or UNet size costs for the same number of steps.

    OMP_NUM_THREADS=1 python benchmarks/fit_cost.py --repeats 5 --batch 8

Variants: the cpu preset's UNet at 96x64 and 192x128 (H x W), and at 96x64 with 2 layers per block
and with a wider first level; ``--variant NAME H W key=value ...`` adds others (``fit.model`` keys).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dtlabel.config import compose  # noqa: E402
from dtlabel.teachers.fit import build_unet  # noqa: E402

DEFAULT = [
    ("cpu preset", 96, 64, {}),
    ("cpu preset", 192, 128, {}),
    ("2 layers per block", 96, 64, {"layers_per_block": 2}),
    ("channels 96-128-192-256", 96, 64, {"block_out_channels": [96, 128, 192, 256]}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", nargs="+", action="append", metavar="NAME H W [key=value ...]")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = OmegaConf.to_container(compose("fit_teacher", ["preset=cpu"]).fit.model)
    variants = list(DEFAULT)
    for name, h, w, *kv in args.variant or []:
        variants.append((name, int(h), int(w), {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in kv)}))
    models = []
    for name, h, w, extra in variants:
        torch.manual_seed(0)
        unet = build_unet({**base, **extra}, (h, w))
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        x = torch.randn(args.batch, 3, h, w)
        t = torch.randint(0, 1000, (args.batch,))
        models.append((unet, opt, x, t))

    def step(k: int) -> None:
        unet, opt, x, t = models[k]
        loss = F.mse_loss(unet(x, t).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(len(models)):  # warm-up
        step(k)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(args.repeats):
        for k in range(len(models)):
            t0 = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - t0)
    med = [statistics.median(v) for v in times]
    print(f"fit-teacher step, batch {args.batch}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| UNet | size (HxW) | parameters | step time | images/s | ratio to first |")
    print("|---|---|---|---|---|---|")
    for (name, h, w, _), (unet, *_), m in zip(variants, models, med):
        n = sum(p.numel() for p in unet.parameters()) / 1e6
        print(f"| {name} | {h}x{w} | {n:.2f}M | {m:.2f} s | {args.batch / m:.2f} | {m / med[0]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
