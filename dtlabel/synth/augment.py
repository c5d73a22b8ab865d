"""Batches of synth samples as tensors, and their augmentation in torch.

Synth batches get the augmentation real pairs get from albumentations (resize, scale jitter, flips),
but in torch and on the training device: one affine per sample applied with ``grid_sample`` to
image, label, uncertainty and logits alike. Normalised coordinates do not depend on resolution, so
the low-resolution logits stay aligned with the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["augment_synth", "collate_synth"]


def collate_synth(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Synth samples (numpy, as :meth:`SynthSet.iter` yields them) -> a batch of tensors."""
    out = {
        "image": torch.stack([torch.from_numpy(np.ascontiguousarray(s["image"])).permute(2, 0, 1) for s in samples]),
        "label": torch.stack([torch.from_numpy(np.ascontiguousarray(s["label"])) for s in samples]),
        "uncertainty": torch.stack([torch.from_numpy(np.ascontiguousarray(s["uncertainty"], dtype=np.float32))
                                    for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples]),
    }
    if all(s.get("logits") is not None for s in samples):
        out["logits"] = torch.stack([torch.as_tensor(np.asarray(s["logits"])) for s in samples])
    return out


def augment_synth(batch: dict[str, torch.Tensor], size: tuple[int, int], hflip: bool,
                  scale: tuple[float, float] | None, ignore_index: int, generator: torch.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Resize to ``size`` + flips / scale jitter of a synth batch, on ``device``.

    One affine per sample through ``grid_sample``: bilinear for image, uncertainty and logits,
    nearest for labels; pixels zoomed in from outside get ``ignore_index`` (and weight 0 in KD), images
    black there.
    Returns image (B, 3, H, W) in [-1, 1], label (B, H, W) long, uncertainty (B, H, W), and
    logits (B, C, h, w) float + ``logits_valid`` (B, h, w) when stored.
    """
    image = batch["image"].to(device).float().div_(127.5).sub_(1.0)
    label = batch["label"].to(device).long()
    unc = batch["uncertainty"].to(device).float()
    logits = batch["logits"].to(device).float() if "logits" in batch else None
    b = image.shape[0]
    lo, hi = (float(scale[0]), float(scale[1])) if scale else (1.0, 1.0)
    s = torch.exp(torch.empty(b).uniform_(math.log(lo), math.log(hi), generator=generator)) if hi > lo else torch.full((b,), lo)
    flip = (torch.rand(b, generator=generator) < 0.5) if hflip else torch.zeros(b, dtype=torch.bool)
    identity = bool((s == 1).all()) and not bool(flip.any())
    if identity and tuple(image.shape[-2:]) == tuple(size):
        valid_lo = torch.ones(b, *logits.shape[-2:], dtype=torch.bool, device=device) if logits is not None else None
        out = {"image": image, "label": label, "uncertainty": unc}
        if logits is not None:
            out.update(logits=logits, logits_valid=valid_lo)
        return out
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / s
    theta[:, 1, 1] = 1.0 / s
    theta = theta.to(device)

    def warp(x: torch.Tensor, out_hw: Sequence[int], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        grid = F.affine_grid(theta, [b, x.shape[1], int(out_hw[0]), int(out_hw[1])], align_corners=False)
        y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        valid = (grid.abs() <= 1.0 + 1e-6).all(-1)  # inside the source image
        return y, valid

    img, valid = warp(image, size, "bilinear")
    img = torch.where(valid[:, None], img, torch.full_like(img, -1.0))  # black outside, as albumentations
    lab, _ = warp(label[:, None].float(), size, "nearest")
    u, _ = warp(unc[:, None], size, "bilinear")
    lab = torch.where(valid, lab[:, 0].round().long(), torch.full_like(valid, ignore_index, dtype=torch.long))
    out = {"image": img, "label": lab, "uncertainty": torch.where(valid, u[:, 0], torch.ones_like(u[:, 0]))}
    if logits is not None:
        lg, lvalid = warp(logits, logits.shape[-2:], "bilinear")
        out.update(logits=lg, logits_valid=lvalid)
    return out
