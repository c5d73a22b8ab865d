"""What pretrain leaves behind: the backbone in timm's format, and a picture of what it learned.

``RUN/backbone/backbone.safetensors`` is the state dict of ``timm.create_model(name,
features_only=True)`` (loads with ``strict=True``); ``backbone.json`` says which network it is, the
teacher it learned from and how teacher maps were matched with its levels. ``train-student
--backbone RUN`` initialises an smp student's encoder from it (``tu-<name>`` or smp's own name).

``features.png``: for a few pool images, the first three principal components of each teacher map
(after the teacher-side normalisation) as RGB, beside the regressed map projected on the same
components, so a person sees how much of the teacher's structure the backbone reproduces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dtlabel.saving import ModelFiles
from dtlabel.report import save_grid

BACKBONE = "backbone"
FORMAT = "dtlabel-backbone/1"
BACKBONE_FILES = ModelFiles(BACKBONE, FORMAT)   # backbone.safetensors + backbone.json (dtlabel.saving)
WEIGHTS = BACKBONE_FILES.weights
DESCRIPTOR = BACKBONE_FILES.descriptor


def save_backbone(folder: str | Path, backbone: torch.nn.Module, **descriptor: Any) -> Path:
    """``folder/backbone.safetensors`` + ``folder/backbone.json`` (descriptor last, folder atomic)."""
    state = dict(sorted(backbone.state_dict().items()))
    return BACKBONE_FILES.save(folder, state, {"weights": WEIGHTS, "tensors": len(state), **descriptor})


def _pca_rgb(maps: Sequence[torch.Tensor], size: Sequence[int]) -> list[np.ndarray]:
    """Project ``(C, h, w)`` maps on the first 3 principal components of the first; RGB uint8 at ``size``."""
    first = maps[0].float().flatten(1).T  # (hw, C)
    mean = first.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(first - mean, q=min(3, *first.shape), center=False)
    proj = [((m.float().flatten(1).T - mean) @ v).T.reshape(-1, *m.shape[-2:]) for m in maps]
    lo = proj[0].amin(dim=(1, 2), keepdim=True)
    hi = proj[0].amax(dim=(1, 2), keepdim=True)
    out = []
    for p in proj:
        p = ((p - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        if p.shape[0] < 3:
            p = torch.cat([p, p.new_zeros(3 - p.shape[0], *p.shape[1:])])
        p = F.interpolate(p[None], size=tuple(int(s) for s in size), mode="nearest")[0]
        out.append((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return out


def save_feature_pca(path: str | Path, images: np.ndarray, teacher: Mapping[str, torch.Tensor],
                     regressed: Mapping[str, torch.Tensor], title: str = "") -> None:
    """``images (B, H, W, 3)`` uint8; teacher / regressed maps ``{name: (B, C, h, w)}`` (teacher already
    normalised); one row per image: the image, then teacher | regressed per map."""
    names = list(teacher)
    rows = []
    for b in range(images.shape[0]):
        row = [images[b]]
        for n in names:
            r = regressed[n][b].float()
            if r.shape[-2:] != teacher[n].shape[-2:]:
                r = F.interpolate(r[None], size=teacher[n].shape[-2:], mode="bilinear", align_corners=False)[0]
            row += _pca_rgb([teacher[n][b], r], images.shape[1:3])
        rows.append(row)
    titles = ["image"] + [f"{which}\n{n}" for n in names for which in ("teacher", "regressed")]
    save_grid(path, rows, titles=titles, suptitle=title)
