"""The consistency-regularisation peer: a UniMatch-style student on real labels + a label-free pool.

UniMatch (Yang et al., CVPR 2023), the simple strong baseline of semi-supervised segmentation, as
dtlabel trains it (``train-student --labels N student.unlabeled=unimatch``), one student and no
teacher. Each step takes a batch of the N labeled images and a batch of the data set's label-free
pool (never its validation or test images, nor the N labeled and validation images):

- the **weak view** of an unlabeled image (the same flips and scale jitter as the real labels') is
  predicted; its confident pixels (max probability >= ``threshold``, 0.95) are pseudo-labels;
- two **strong views** of it (colour jitter, grayscale, Gaussian blur, and CutMix with another image
  of the batch, each drawn independently) learn those pseudo-labels (CutMix mixes the partner's);
- a **feature-perturbed view**: the weak view's encoder features through channel dropout (p 0.5) and
  the decoder learn them too.

Loss: ``(L_real + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2`` with ``L_real`` the house's CE + Dice and each
unlabeled term a cross-entropy over the confident pixels, normalised by the valid pixels (UniMatch's
weights). The four views go through the network in one forward (:class:`UniMatchNet`), so DDP sees one
call per step. Every random draw comes from the step's seed, so a resumed run is the same run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dtlabel import dist, seeds
from dtlabel.data.streams import IndexStream
from dtlabel.losses import ce_dice_loss
from dtlabel.students.task import StudentTask
from dtlabel.synth.augment import augment_synth

PICTURE = "unimatch_views.png"
log = logging.getLogger(__name__)
_GRAY = torch.tensor([0.299, 0.587, 0.114])


class PoolImages(Dataset):
    """Images of a label-free pool at the training size: item ``(position, index)`` ->
    ``(position, index, image (3, H, W) uint8)``."""

    def __init__(self, source: Any, ids: Sequence[str], size: tuple[int, int]) -> None:
        self.source, self.ids, self.size = source, list(ids), (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int, torch.Tensor]:
        from dtlabel.labeling import resized

        position, index = item
        arr = resized(self.source.image(self.ids[index]), self.size)
        return position, index, torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


class UniMatchNet(torch.nn.Module):
    """An smp student whose forward can also return the feature-perturbed prediction of a slice:
    ``forward(x)`` -> logits; ``forward(x, fp=(a, b))`` -> ``(logits, logits_fp of x[a:b])``, where the
    encoder features of ``x[a:b]`` pass through channel dropout before the decoder."""

    def __init__(self, student: torch.nn.Module, dropout: float = 0.5) -> None:
        super().__init__()
        self.student, self.dropout = student, float(dropout)

    def forward(self, x: torch.Tensor, fp: tuple[int, int] | None = None) -> Any:
        net = self.student
        feats = net.encoder(x)
        logits = net.segmentation_head(net.decoder(feats))
        if fp is None:
            return logits
        a, b = fp
        # features[0] is the input image in smp encoders: perturb the learned stages only
        dropped = [f[a:b] if k == 0 else F.dropout2d(f[a:b], self.dropout, training=True) for k, f in enumerate(feats)]
        return logits, net.segmentation_head(net.decoder(dropped))


# ------------------------------------------------------------------------------------------- views
def strong_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """UniMatch's photometric strong perturbation of ``x (B, 3, H, W)`` in [-1, 1], per image: colour
    jitter (brightness, contrast, saturation 0.5, hue 0.25; p 0.8), grayscale (p 0.2), Gaussian blur
    (sigma 0.1-2, p 0.5). Geometry is untouched, so the weak view's pseudo-labels stay aligned."""
    b, dev = x.shape[0], x.device
    img = (x.float() + 1) / 2

    def draw(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(b).uniform_(lo, hi, generator=g).to(dev).view(b, 1, 1, 1)

    jitter = (torch.rand(b, generator=g) < 0.8).to(dev).view(b, 1, 1, 1)
    bright, contrast, sat, hue = draw(0.5, 1.5), draw(0.5, 1.5), draw(0.5, 1.5), draw(-0.25, 0.25)
    gray_w = _GRAY.to(dev).view(1, 3, 1, 1)
    j = (img * bright).clamp(0, 1)
    mean = (j * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    j = ((j - mean) * contrast + mean).clamp(0, 1)
    gray = (j * gray_w).sum(1, keepdim=True)
    j = ((j - gray) * sat + gray).clamp(0, 1)
    j = _hue_shift(j, hue)
    img = torch.where(jitter, j, img)
    to_gray = (torch.rand(b, generator=g) < 0.2).to(dev).view(b, 1, 1, 1)
    img = torch.where(to_gray, (img * gray_w).sum(1, keepdim=True).expand_as(img), img)
    blur = torch.rand(b, generator=g) < 0.5
    sigma = torch.empty(b).uniform_(0.1, 2.0, generator=g)
    out = img.clone()
    for k in torch.nonzero(blur).flatten().tolist():
        out[k] = _gaussian_blur(img[k:k + 1], float(sigma[k]))[0]
    return out * 2 - 1


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _hue_shift(img: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``img (B, 3, H, W)`` in [0, 1] by ``turn`` (fractions of a full turn) in YIQ."""
    yiq = torch.einsum("ij,bjhw->bihw", _TO_YIQ.to(img.device), img)
    angle = turn.view(-1, 1, 1) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", _FROM_YIQ.to(img.device), yiq).clamp(0, 1)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=img.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(img.dtype)
    c = img.shape[1]
    pad = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def cutmix_boxes(b: int, size: tuple[int, int], g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """``(B, H, W)`` bool: per image, with probability ``p``, a box of 2-40 % of the area (aspect
    0.3-3.3) where the partner image (the next one of the batch) is pasted; else all False."""
    h, w = size
    boxes = torch.zeros(b, h, w, dtype=torch.bool)
    for k in range(b):
        on, area, ratio = float(torch.rand(1, generator=g)), float(torch.empty(1).uniform_(0.02, 0.4, generator=g)), \
            float(torch.empty(1).uniform_(0.3, 1 / 0.3, generator=g))
        bh, bw = min(h, int(round(math.sqrt(area * h * w / ratio)))), min(w, int(round(math.sqrt(area * h * w * ratio))))
        y0, x0 = int(torch.randint(0, h - bh + 1, (1,), generator=g)), int(torch.randint(0, w - bw + 1, (1,), generator=g))
        if on < p:
            boxes[k, y0:y0 + bh, x0:x0 + bw] = True
    return boxes


def _paste(box: torch.Tensor, own: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``own`` with ``partner`` inside ``box (B, H, W)``; tensors ``(B, H, W)`` or ``(B, C, H, W)``."""
    m = box if own.dim() == 3 else box[:, None]
    return torch.where(m, partner, own)


# ------------------------------------------------------------------------------------------- task
class UniMatchTask(StudentTask):
    """train-student with ``student.unlabeled=unimatch``: ``pool`` is ``(source, ids)`` of the label-free
    images; the rest as :class:`StudentTask` on the real labels alone (``synth`` is None)."""

    name = "train-student (unimatch)"

    def __init__(self, model: torch.nn.Module, source: Any, label_ids: Sequence[str], pool: tuple[Any, list[str]],
                 val_ids: Sequence[str], test_ids: Sequence[str], size: tuple[int, int], sc: Any, seed: int,
                 device: torch.device, amp: str = "auto", num_workers: int = 0, unused_parameters: int = 0,
                 run_dir: Path | None = None) -> None:
        super().__init__(model, source, label_ids, None, val_ids, test_ids, size, sc, seed, device, amp, num_workers,
                         unused_parameters)
        um = sc.unimatch
        self.student = model
        self.model = UniMatchNet(model, float(um.fp_dropout))
        self.threshold, self.cutmix = float(um.threshold), float(um.cutmix)
        self.n_unl = int(um.unlabeled_batch_size or sc.batch_size)
        self.pool = PoolImages(pool[0], pool[1], size)
        self.images_per_step = (self.n_real + self.n_unl) * self.world
        self.run_dir = run_dir
        self._last: dict[str, torch.Tensor] | None = None

    @property
    def mode(self) -> str:
        return "real+unimatch"

    def batches(self, start_step: int) -> Iterator[tuple[Any, Any]]:
        real = IndexStream(self.n_labels, self.n_real * self.world, self.seed, start_step, self.total, self.rank,
                           self.world)
        # the pool's own stream: another seed, so its passes are not the labeled passes' permutations
        unl = IndexStream(len(self.pool), self.n_unl * self.world, self.seed + 1, start_step, self.total, self.rank,
                          self.world)
        real_it = iter(DataLoader(self.real, batch_sampler=real, num_workers=self.num_workers))
        unl_it = iter(DataLoader(self.pool, batch_sampler=unl, num_workers=self.num_workers))
        for _ in range(start_step, self.total):
            yield next(real_it)[2:], next(unl_it)[2]

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        (real_x, real_y), unl = batch
        g = torch.Generator().manual_seed(seeds.step(self.seed, step, self.rank))
        b = unl.shape[0]
        zeros = torch.zeros(b, *unl.shape[-2:], dtype=torch.uint8)
        with torch.autocast(self.device.type, enabled=False):  # the views in float32, whatever amp trains in
            weak = augment_synth({"image": unl, "label": zeros, "uncertainty": zeros.float()}, self.size,
                                 bool(self.sc.hflip), self.scale, 255, g, self.device)
            u_w, valid = weak["image"], weak["label"] != 255          # pixels inside the source image
            s1, s2 = strong_view(u_w, g), strong_view(u_w, g)
            box1, box2 = (cutmix_boxes(b, self.size, g, self.cutmix).to(self.device) for _ in range(2))
            s1, s2 = _paste(box1, s1, s1.roll(1, 0)), _paste(box2, s2, s2.roll(1, 0))
        n = real_x.shape[0]
        x = torch.cat([real_x.to(self.device), u_w, s1, s2])
        logits, logits_fp = model(x, fp=(n, n + b))
        logits, logits_fp = logits.float(), logits_fp.float()
        pred_x, pred_w, pred_s1, pred_s2 = logits[:n], logits[n:n + b], logits[n + b:n + 2 * b], logits[n + 2 * b:]
        with torch.no_grad():
            conf, label = pred_w.detach().softmax(1).max(1)
        keep = (conf >= self.threshold) & valid
        t1 = (_paste(box1, label, label.roll(1, 0)), _paste(box1, keep, keep.roll(1, 0)),
              _paste(box1, valid, valid.roll(1, 0)))
        t2 = (_paste(box2, label, label.roll(1, 0)), _paste(box2, keep, keep.roll(1, 0)),
              _paste(box2, valid, valid.roll(1, 0)))
        r = ce_dice_loss(pred_x, real_y.to(self.device), self.ignore, float(self.sc.dice_weight))
        l_s1, l_s2 = _masked_ce(pred_s1, *t1), _masked_ce(pred_s2, *t2)
        l_fp = _masked_ce(logits_fp, label, keep, valid)
        total = (r["loss"] + 0.25 * l_s1 + 0.25 * l_s2 + 0.5 * l_fp) / 2
        if self.rank == 0:
            self._last = {"weak": u_w[:4].detach().cpu(), "s1": s1[:4].detach().cpu(), "s2": s2[:4].detach().cpu(),
                          "label": label[:4].cpu(), "keep": keep[:4].cpu()}
        return {"loss": total, "real": r["loss"], "ce": r["ce"], "dice": r["dice"], "s1": l_s1.detach(),
                "s2": l_s2.detach(), "fp": l_fp.detach(), "confident": keep.float().mean().detach()}

    def evaluate(self, step: int) -> dict[str, Any]:
        out = super().evaluate(step)
        if self.rank == 0 and self._last is not None and self.run_dir is not None:
            self.save_views(self.run_dir / PICTURE, step)
        return out

    def save_views(self, path: Path, step: int) -> Path:
        """``unimatch_views.png``: per unlabeled image of the last step its weak view, the two strong
        views, the pseudo-label of the weak view and the confident pixels (white) that train them."""
        from dtlabel.data.transforms import to_uint8
        from dtlabel.report import overlay, save_grid

        v = self._last
        assert v is not None
        c = len(self.names)
        rows = []
        for k in range(v["weak"].shape[0]):
            weak = to_uint8(v["weak"][k:k + 1])[0]
            keep = (v["keep"][k].numpy().astype(np.uint8) * 255)
            rows.append([weak, to_uint8(v["s1"][k:k + 1])[0], to_uint8(v["s2"][k:k + 1])[0],
                         overlay(weak, v["label"][k].numpy().astype(np.uint8), c, 0.6), np.stack([keep] * 3, -1)])
        return save_grid(path, rows, titles=["weak view", "strong view 1", "strong view 2", "pseudo-label",
                                             f"confident (>= {self.threshold:g})"], class_names=self.names,
                         suptitle=f"UniMatch views at step {step}: {float(v['keep'].float().mean()) * 100:.0f}% of the "
                                  "shown pixels confident")


def _masked_ce(logits: torch.Tensor, label: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the ``keep`` pixels, divided by the ``valid`` pixels (UniMatch's normalisation:
    the loss shrinks while few pixels are confident)."""
    ce = F.cross_entropy(logits, label.long(), reduction="none")
    return (ce * keep.float()).sum() / valid.float().sum().clamp_min(1.0)


def unimatch_pool(bundle: Any, held: Sequence[str]) -> tuple[Any, list[str]]:
    """The data set's label-free pool without ``held`` (the labeled and validation ids): what the
    unlabeled batches are drawn from; never validation or test images."""
    from dtlabel.data import pseudo_label_pool

    source, ids, _ = pseudo_label_pool(bundle, held)
    if dist.is_main():
        log.info("unimatch: %d label-free images of %s in the unlabeled stream", len(ids), bundle.name)
    return source, ids
