"""``dtlabel fit-teacher``: train a DDPM teacher on the unlabeled pool (diffusers format out)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from dtlabel import dist, seeds
from dtlabel.data import build_data, label_free_pool
from dtlabel.data.transforms import ImageDataset, build_transform, to_uint8
from dtlabel.device import select_device
from dtlabel.errors import DataError
from dtlabel.report import save_grid, save_training_curves
from dtlabel.runs import Run
from dtlabel.teachers.fit import fit_ddpm, teacher_size
from dtlabel.teachers.gan_fit import fit_gan

log = logging.getLogger(__name__)


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    device = dist.init_from_env(select_device(cfg.device))
    bundle = build_data(cfg.data)
    fit = cfg.fit
    size = teacher_size(fit, cfg.data)
    source = label_free_pool(bundle, bool(fit.include_labeled))
    if source is None:
        raise DataError(f"data set {bundle.name} has no images to train a teacher on; pass --images DIR")
    images = ImageDataset(source, None, build_transform(size, train=False))
    log.info("training on %d images at %dx%d (HxW)", len(images), *size)
    gan = str(fit.family) == "gan"
    trainer = fit_gan if gan else fit_ddpm
    result = trainer(images, run.path, fit, size, device, int(cfg.seed), str(cfg.amp), int(cfg.num_workers),
                     progress=not args.quiet)
    desc: dict[str, Any] = {
        "teacher": "teacher", "family": str(fit.family), "size": list(size), "steps": result.steps,
        "steps_planned": int(fit.steps), "stopped_early": result.stopped_early, "schedule": result.schedule,
        "final_loss": None if math.isnan(result.final_loss) else round(result.final_loss, 6), "images_per_second": round(result.images_per_second, 3),
        "data": bundle.name, "num_images": len(images), "amp": result.amp,
    }
    arch = result.architecture
    if arch:
        desc.update(init_from=arch["init_from"], init_steps=arch["init_steps"], total_steps=arch["init_steps"] + result.steps)
    if gan:
        desc["encoder_steps"] = result.encoder.steps if result.encoder else 0
    if dist.is_main() and gan:
        save_training_curves(run.path, "fit-teacher (GAN) loss", "D + R1 + G loss")
        desc.update(_gan_pictures(run.path, result.teacher_dir, images, int(fit.sample_n), int(cfg.seed)))
    elif dist.is_main():
        save_training_curves(run.path, "fit-teacher loss", "MSE (noise prediction)", logy=True)
        if int(fit.sample_n) > 0:
            _sample_grid(run.path, result.teacher_dir, int(fit.sample_n), int(fit.sample_steps), int(cfg.seed), device)
    dist.cleanup()
    return desc


@torch.no_grad()
def _sample_grid(path: Path, teacher_dir: Path, n: int, steps: int, seed: int, device: torch.device) -> None:
    """Sample ``n`` images with DDIM from the exported teacher (plain diffusers, as a user would)."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from dtlabel.teachers.loading import load_component

    unet = load_component(UNet2DModel, teacher_dir, "unet").to(device)  # offline, safetensors, no accelerate warning
    sched = load_component(DDIMScheduler, teacher_dir, "scheduler")
    pipe = DDIMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seeds.synth_sample(seed, i)) for i in range(n)]
    imgs = pipe(batch_size=n, generator=gens, num_inference_steps=steps, output_type="np").images
    imgs = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)
    cols = 8 if n >= 8 else n
    rows = [list(imgs[k:k + cols]) for k in range(0, n, cols)]
    save_grid(path / "samples.png", rows, suptitle=f"teacher samples (DDIM, {steps} steps)")


@torch.no_grad()
def _gan_pictures(path: Path, teacher_dir: Path, images: ImageDataset, n: int, seed: int) -> dict[str, Any]:
    """``samples.png`` from the exported GAN teacher; with an encoder, ``reconstructions.png`` (the
    first ``n`` pool images over their reconstructions ``G(E(x))``) and their mean absolute error."""
    from dtlabel.teachers.gan import GanTeacher

    if n < 1:
        return {}
    teacher = GanTeacher(teacher_dir)
    cols = 8 if n >= 8 else n
    grid = lambda x: [list(x[k:k + cols]) for k in range(0, len(x), cols)]  # noqa: E731
    save_grid(path / "samples.png", grid(list(to_uint8(teacher.sample(n, seed=seed, return_features=False).images))),
              suptitle="GAN teacher samples (EMA generator)")
    if teacher.encoder is None:
        return {}
    real = torch.stack([images[i] for i in range(min(n, len(images)))])
    recon = teacher.features_at(teacher.encode(real))[0]
    error = float((recon - real).abs().mean())
    rows = grid(list(to_uint8(real)))[:1] + grid(list(to_uint8(recon)))[:1]
    save_grid(path / "reconstructions.png", rows, suptitle=f"pool images (top) and G(E(x)) (bottom), L1 {error:.3f}")
    return {"reconstruction_l1": round(error, 5)}

