"""Fixed-noise denoising loss of DDPM teachers: a low-noise figure of how well each teacher models the images.

The training loss of fit-teacher is noisy (each batch draws its own images, timesteps and noise)
and, under ``fit.snr_gamma``, weighted; so it cannot compare runs with different settings. This
script scores every teacher on the same images with the same noise at the same timesteps: image
``k`` and draw ``d`` always get the noise of generator seed ``(k, d)``, whatever the teacher. The
figure is the plain noise-prediction MSE at each timestep and its mean over them, and the
difference of two teachers is far less noisy than the difference of their heads' mIoU (the head
adds its own training noise).

The images are those of a labeled split spec (``--ids``, by default CCP 0705-0804, the held-out
slice of the teacher curve); teachers trained with ``fit.include_labeled`` have seen their RGB, so
this measures fit to the image distribution, not generalisation. The test split is never used.

    OMP_NUM_THREADS=1 python benchmarks/teacher_loss.py data=ccp data.root=PATH/ccp --teacher fp32=runs/t/teacher \\
        --teacher bf16=runs/u/teacher --ids 0705-0804 --out runs/teacher-loss
    python benchmarks/teacher_loss.py --teacher a=models/default --ids test --preset tiny --draws 1   # seconds

(``key=value`` overrides go before the options, or after ``--``: ``--timesteps`` takes a list.)

Output: ``teacher_loss.json`` and ``teacher_loss.md`` (one row per teacher) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402


def load_images(overrides: list[str], ids_spec: str, size: tuple[int, int]) -> torch.Tensor:
    """The labeled images of split name or id spec ``ids_spec`` as ``(N, 3, H, W)`` in [-1, 1] at the teacher size."""
    from dtlabel.config import compose
    from dtlabel.data import build_data
    from dtlabel.data.splits import resolve_split
    from dtlabel.data.transforms import ImageDataset, build_transform

    bundle = build_data(compose("fit_teacher", overrides).data)
    if bundle.labeled is None:
        raise ValueError(f"data set {bundle.name} has no labeled images for --ids")
    ids = bundle.splits[ids_spec] if ids_spec in bundle.splits else resolve_split(ids_spec, bundle.labeled.ids, None, "--ids")
    if not ids:
        raise ValueError(f"--ids {ids_spec}: no images")
    data = ImageDataset(bundle.labeled, ids, build_transform(size, train=False))
    return torch.stack([data[k] for k in range(len(data))])


@torch.no_grad()
def denoising_mse(unet: torch.nn.Module, scheduler: object, images: torch.Tensor, timesteps: list[int],
                  draws: int, batch: int) -> dict[int, float]:
    """Mean noise-prediction MSE of ``unet`` at each timestep, over ``images`` x ``draws`` fixed noises."""
    out: dict[int, float] = {}
    n = images.shape[0]
    noises = [torch.stack([torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(1000 * k + d))
                           for k in range(n)]) for d in range(draws)]
    for t in timesteps:
        total = 0.0
        for noise in noises:
            for i in range(0, n, batch):
                x0, eps = images[i:i + batch], noise[i:i + batch]
                tt = torch.full((x0.shape[0],), t, dtype=torch.long)
                pred = unet(scheduler.add_noise(x0, eps, tt), tt).sample.float()
                total += float((pred - eps).pow(2).mean(dim=(1, 2, 3)).sum())
        out[t] = total / (n * draws)
    return out


def main(argv: list[str] | None = None) -> int:
    from diffusers import DDPMScheduler, UNet2DModel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", action="append", required=True, metavar="NAME=DIR",
                   help="a diffusers DDPM folder (unet/ + scheduler/), repeatable")
    p.add_argument("--ids", default="0705-0804", help="labeled split spec of the images (never the test split on CCP)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[25, 50, 100, 250, 500, 750])
    p.add_argument("--draws", type=int, default=2, help="fixed noise draws per image")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default="runs/teacher-loss")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (the data set)")
    args = p.parse_args(argv)
    teachers = []
    for spec in args.teacher:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "unet").is_dir():
            print(f"teacher_loss: error: --teacher {spec}: expected NAME=DIR with DIR a diffusers DDPM folder",
                  file=sys.stderr)
            return 2
        teachers.append((name, Path(path)))
    rows, images, size = [], None, None
    for name, path in teachers:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet").float().eval()
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        s = unet.config.sample_size
        tsize = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
        if images is None:
            size = tsize
            try:
                images = load_images([f"preset={args.preset}", *args.overrides], args.ids, size)
            except Exception as e:  # a bad data set or split spec: one line
                print(f"teacher_loss: error: {e}", file=sys.stderr)
                return 2
            print(f"{images.shape[0]} images of {args.ids} at {size[0]}x{size[1]}, {args.draws} noise draws", flush=True)
        elif tsize != size:
            print(f"teacher_loss: error: {name} is {tsize}, the first teacher {size}: compare teachers of one size",
                  file=sys.stderr)
            return 2
        start = time.perf_counter()
        mse = denoising_mse(unet, scheduler, images, args.timesteps, args.draws, args.batch)
        mean = sum(mse.values()) / len(mse)
        rows.append({"teacher": name, "path": str(path), "mse": {str(t): round(v, 6) for t, v in mse.items()},
                     "mean": round(mean, 6), "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name}: mean {mean:.5f} " + " ".join(f"t{t}={v:.5f}" for t, v in mse.items()), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = "| teacher | mean | " + " | ".join(f"t = {t}" for t in args.timesteps) + " |"
    lines = [head, "|---" * (len(args.timesteps) + 2) + "|"]
    lines += [f"| {r['teacher']} | {r['mean']:.5f} | " + " | ".join(f"{r['mse'][str(t)]:.5f}" for t in args.timesteps)
              + " |" for r in rows]
    (out / "teacher_loss.md").write_text("\n".join(lines) + "\n")
    (out / "teacher_loss.json").write_text(json.dumps({"ids": args.ids, "draws": args.draws, "rows": rows}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
