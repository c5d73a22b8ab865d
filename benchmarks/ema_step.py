"""fit-teacher's EMA step: diffusers' per-tensor loop against its fused ``foreach`` ops (issue 38).

The cpu preset's UNet at 64x64; both variants alternate in one process (``--rounds``), the minimum
per-step time of each is reported with the largest difference between their shadow weights after
one identical step (the two must agree: fit-teacher picks ``foreach`` on CUDA only).

    OMP_NUM_THREADS=1 python benchmarks/ema_step.py --rounds 3 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from dtlabel.config import compose  # noqa: E402
from dtlabel.teachers.fit import build_unet  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    unet = build_unet(compose("fit_teacher", ["preset=cpu"]).fit.model, (64, 64)).to(args.device)
    params = list(unet.parameters())
    best = {False: float("inf"), True: float("inf")}
    for _ in range(args.rounds):
        for foreach in (False, True):
            ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75, foreach=foreach)
            ema.step(params)
            if args.device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                ema.step(params)
            if args.device != "cpu":
                torch.cuda.synchronize()
            best[foreach] = min(best[foreach], (time.perf_counter() - start) / args.steps * 1000)
    loop, fused = (EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75, foreach=f) for f in (False, True))
    with torch.no_grad():
        for q in params:
            q.add_(0.01)
    loop.step(params)
    fused.step(params)
    diff = max(float((a - b).abs().max()) for a, b in zip(loop.shadow_params, fused.shadow_params))
    print(f"EMA step of {sum(q.numel() for q in params) / 1e6:.1f}M parameters in {len(params)} tensors on "
          f"{args.device}, {torch.get_num_threads()} thread(s): loop {best[False]:.2f} ms, foreach {best[True]:.2f} ms "
          f"({best[False] / best[True]:.2f}x), largest difference {diff:.1e}")


if __name__ == "__main__":
    main()
