"""Teacher benchmarks: feature-extraction overhead and fit-teacher throughput.

1. Feature extraction (``Teacher.features``: noising, hooked UNet pass, early stop) over a bare
   ``unet(x_t, t)`` forward on the same batch, and a naive variant (hooks on every up block, full
   forward, then upsample + concat to the image size, as the peers do). Variants run interleaved,
   ``--repeats`` times, and the median ratio is reported, so machine noise hits all alike.
2. fit-teacher images/s for the tiny and cpu presets (a few steps after one warm-up step).

    python benchmarks/teacher.py --size 96 64 --batch 8 --repeats 7 --threads 1

Prints markdown rows for docs/RESULTS.md. The UNet is the cpu preset's (dtlabel/configs/fit/cpu.yaml) with
random weights: timing does not depend on the weights.
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
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dtlabel.config import compose  # noqa: E402
from dtlabel.teachers import teacher_from_config  # noqa: E402
from dtlabel.teachers.fit import build_unet  # noqa: E402


def _time(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_features(size: tuple[int, int], batch: int, repeats: int, preset: str) -> list[str]:
    from diffusers import DDPMPipeline, DDPMScheduler

    cfg = compose("fit_teacher", [f"preset={preset}"])
    unet = build_unet(cfg.fit.model, size).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp)
        tcfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "dtlabel" / "configs" / "teacher" / "tiny.yaml")
        all_blocks = teacher_from_config(tmp, tcfg)
        n_up = len(all_blocks.unet.up_blocks)
        two = teacher_from_config(tmp, {**OmegaConf.to_container(tcfg), "blocks": [f"up_blocks.{i}" for i in range(1, 3)]})
        x = torch.rand(batch, 3, *size) * 2 - 1
        t = torch.full((batch,), 50, dtype=torch.long)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        xt = all_blocks.noise_scheduler.add_noise(x, noise, t)

        @torch.no_grad()
        def bare() -> None:
            unet(xt, t)

        @torch.no_grad()
        def naive() -> None:  # hooks on every up block, full forward, upsample + concat
            store: list[torch.Tensor] = []
            hs = [b.register_forward_hook(lambda m, a, o: store.append(o)) for b in unet.up_blocks]
            unet(all_blocks.noise_scheduler.add_noise(x, noise, t), t)
            for h in hs:
                h.remove()
            torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in store], 1)

        @torch.no_grad()
        def feats_all() -> None:
            all_blocks.features(x, seed=0)

        @torch.no_grad()
        def feats_two() -> None:
            two.features(x, seed=0)

        variants = {"bare UNet forward": bare, "naive hooks + upsample + concat": naive,
                    f"features(), all {n_up} up blocks": feats_all, "features(), up_blocks.1-2 (early stop)": feats_two}
        for fn in variants.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for k, fn in variants.items():
                times[k] += _time(fn, 1)
        base = times["bare UNet forward"]
        for k, ts in times.items():
            ratio = statistics.median(a / b for a, b in zip(ts, base))
            rows.append(f"| {preset} UNet {'x'.join(map(str, size))}, batch {batch} | {k} | "
                        f"{1000 * statistics.median(ts):.0f} ms | {ratio:.2f} |")
    return rows


def bench_fit(preset: str, size: tuple[int, int], steps: int) -> str:
    from dtlabel.data import build_data
    from dtlabel.data.transforms import ImageDataset, build_transform
    from dtlabel.teachers.fit import fit_ddpm

    cfg = compose("fit_teacher", [f"preset={preset}", f"fit.steps={steps}", "fit.checkpoint_every=100000",
                                  f"data.size=[{size[0]},{size[1]}]"])
    bundle = build_data(cfg.data)
    ds = ImageDataset(bundle.unlabeled, None, build_transform(size))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = fit_ddpm(ds, Path(tmp), cfg.fit, size, torch.device("cpu"), 0, progress=False)
        wall = time.perf_counter() - t0
    n_params = sum(p.numel() for p in build_unet(cfg.fit.model, size).parameters()) / 1e6
    return (f"| fit-teacher --preset {preset} | {'x'.join(map(str, size))} | {n_params:.2f}M | batch {cfg.fit.batch_size} "
            f"| {res.images_per_second:.1f} img/s | {wall:.0f} s for {steps} steps incl. export |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=[96, 64], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fit-steps", type=int, default=6)
    ap.add_argument("--skip-fit", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (args.size[0], args.size[1])
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| teacher | variant | median time | ratio to bare forward |\n|---|---|---|---|")
    for row in bench_features(size, args.batch, args.repeats, "cpu"):
        print(row, flush=True)
    if not args.skip_fit:
        print("\n| command | size (HxW) | UNet | batch | throughput | wall |\n|---|---|---|---|---|---|")
        print(bench_fit("tiny", (32, 32), max(args.fit_steps, 10)), flush=True)
        print(bench_fit("cpu", size, args.fit_steps), flush=True)


if __name__ == "__main__":
    main()
