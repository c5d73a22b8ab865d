"""Pseudo-labels of image batches: a labeler's predictions (a head on teacher features, a student, an
ensemble: :mod:`dtlabel.synth.labelers`), in the shard format.

Two sources (docs/METHOD.md §5): images the teacher samples (``sampled_batch``: sample ``i`` from
seed ``seeds.synth_sample(base_seed, i)``, features read with the same seed) and real images of a
folder or of a data set's pool (``image_batch`` over an ``ImageList``: resized to the synth size, encoded
with the same per-index noise seed).
Each sample is a dict ``index, seed, image (H, W, 3) uint8, label (H, W) uint8, uncert (H, W) uint16,
logits (C, h, w) fp16 log-probabilities or None, score, source, file`` that ``ShardWriter`` stores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dtlabel import seeds
from dtlabel.data.folder import read_image
from dtlabel.data.transforms import to_uint8
from dtlabel.errors import DataError
from dtlabel.io import sha256_file
from dtlabel.heads import image_score
from dtlabel.synth.labelers import Labeler
from dtlabel.synth.shards import LOGIT_FLOOR, UNCERTAINTY_LEVELS, uncertainty_to_uint16

log = logging.getLogger(__name__)


@torch.no_grad()
def label_batch(probs: torch.Tensor, unc: torch.Tensor, logits_size: tuple[int, int] | None,
                score_top: float) -> dict[str, Any]:
    """A labeler's ``probs (B, C, H, W)`` and ``uncertainty (B, H, W)`` (nats) as numpy: label, uint16
    uncertainty, logits, scores."""
    c = probs.shape[1]
    u_norm = (unc.float() / math.log(max(2, c))).clamp(0, 1)
    u16 = uncertainty_to_uint16(u_norm.cpu().numpy())
    out: dict[str, Any] = {
        "label": probs.argmax(1).to(torch.uint8).cpu().numpy(),
        "uncert": u16,
        # from the stored map, so the score is reproducible from the shard alone, bit for bit; its
        # 65535 levels keep the ensemble's small divergences apart (the 255 levels of format 1 did not)
        "score": image_score(torch.from_numpy(u16.astype(np.int32)).double() / UNCERTAINTY_LEVELS, top=score_top).numpy(),
        "logits": None,
    }
    if logits_size is not None:
        small = probs if tuple(probs.shape[-2:]) == logits_size else F.interpolate(probs.float(), size=logits_size, mode="area")
        out["logits"] = small.clamp_min(math.exp(LOGIT_FLOOR)).log().half().cpu().numpy()
    return out


@dataclass(frozen=True)
class ImageList:
    """The real images a synthesize run labels: ``names[i]`` (the sample's ``file``: a path relative
    to the ``--images`` folder, or a data set id) and ``read(i)``, its pixels ``(H, W, 3) uint8``."""

    names: list[str]
    read: Callable[[int], np.ndarray]

    file: Callable[[int], Path | None] = lambda i: None

    def sha256(self, i: int) -> str | None:
        """The sha256 of image ``i``'s file (None where it has none): students recognise pseudo-labeled
        copies of their validation and test images by it."""
        path = self.file(i)
        return sha256_file(path) if path is not None else None

    @classmethod
    def of_files(cls, files: Sequence[Path], root: Path) -> "ImageList":
        return cls([p.relative_to(root).as_posix() for p in files], lambda i: read_image(files[i]), lambda i: files[i])

    @classmethod
    def of_source(cls, source: Any, ids: Sequence[str]) -> "ImageList":
        return cls(list(ids), lambda i: source.image(ids[i]), lambda i: source.file(ids[i]))


def resized(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3) uint8`` at ``size = (h, w)`` (bicubic; unchanged if it is that size already)."""
    if arr.shape[:2] != tuple(size):
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BICUBIC), dtype=np.uint8)
    return arr


def sampled_batch(teacher: Any, labeler: Labeler, idx: list[int], base_seed: int, steps: int,
                  size: tuple[int, int], logits_size: tuple[int, int] | None, score_top: float) -> list[dict[str, Any]]:
    seeds_ = [seeds.synth_sample(base_seed, i) for i in idx]
    out = teacher.sample(len(idx), seed=seeds_[0], steps=steps, batch_size=len(idx), return_features=True,
                         output_device=None)
    probs, unc = labeler.predict(out.images, seeds_, size, features=out.features, teacher=teacher)
    lab = label_batch(probs, unc, logits_size, score_top)
    images = to_uint8(out.images)
    return [_sample_dict(lab, k, i, seeds_[k], images[k], "sample", None) for k, i in enumerate(idx)]


def image_batch(labeler: Labeler, images: ImageList, idx: list[int], base_seed: int,
                size: tuple[int, int], logits_size: tuple[int, int] | None, score_top: float,
                skip_corrupt: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    arrays, kept, skipped = [], [], []
    for i in idx:
        try:
            arrays.append(resized(images.read(i), size))
            kept.append(i)
        except DataError as exc:
            if not skip_corrupt:
                raise DataError(f"{exc} (or pass synth.skip_corrupt=true to skip such files)") from None
            log.warning("skipping %s", exc)
            skipped.append({"index": i, "file": images.names[i], "error": str(exc)})
    if not kept:
        return [], skipped
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    probs, unc = labeler.predict(x, [seeds.synth_sample(base_seed, i) for i in kept], size)
    lab = label_batch(probs, unc, logits_size, score_top)
    return [_sample_dict(lab, k, i, seeds.synth_sample(base_seed, i), arrays[k], "image", images.names[i])
            for k, i in enumerate(kept)], skipped


def _sample_dict(lab: dict[str, Any], k: int, index: int, seed: int, image: np.ndarray, source: str,
                 file: str | None) -> dict[str, Any]:
    return {
        "index": index, "seed": seed, "image": image, "label": lab["label"][k], "uncert": lab["uncert"][k],
        "logits": lab["logits"][k] if lab["logits"] is not None else None, "score": round(float(lab["score"][k]), 6),
        "source": source, "file": file,
    }
