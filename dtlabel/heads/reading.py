"""Teacher features for heads: images at the data size in, the teacher's named maps out.

:class:`TeacherFeatures` resizes images to the teacher's size and reads its features online (fresh
noise per seed) or through a :class:`~dtlabel.teachers.cache.FeatureCache`; :func:`head_predictor`
turns a head + features into the ``predict`` function :func:`dtlabel.evaluation.evaluate_segmentation`
scores, with the evaluation noise stream of train-head (so every command scores a head the same way).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from dtlabel import seeds
from dtlabel.heads import to_teacher_size

log = logging.getLogger(__name__)


class TeacherFeatures:
    """Teacher features of images at the data size: resized to the teacher's size, then computed
    online or read from / written to a feature cache.

    ``chunk`` bounds the images per teacher forward (None: the whole batch). The UNet's activations
    for ``chunk x timesteps`` images, not the features, dominate peak memory at large sizes; per-image
    noise seeds make the result independent of the chunking.
    """

    def __init__(self, teacher: Any, cache: Any | None = None, chunk: int | None = None) -> None:
        self.teacher, self.cache, self.chunk = teacher, cache, chunk

    def __call__(self, images: torch.Tensor, seeds_: Sequence[int]) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` in [-1, 1], one noise seed per image -> ``{name: (B, C, h, w)}``."""
        seeds_ = [int(s) for s in seeds_]
        step = int(self.chunk or len(seeds_)) or 1
        parts = [self._features(images[s:s + step], seeds_[s:s + step]) for s in range(0, len(seeds_), step)]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _features(self, images: torch.Tensor, seeds_: list[int]) -> dict[str, torch.Tensor]:
        x = to_teacher_size(images, self.teacher.image_size).to(self.teacher.device)
        if self.cache is not None:
            return self.cache.features(self.teacher, x, seeds=seeds_)
        return self.teacher.features(x, seed=seeds_)


def head_predictor(head: Any, feats: TeacherFeatures, seed: int, size: Sequence[int]):  # noqa: ANN201
    """``predict(images, indices) -> (pred, uncertainty)`` of ``head`` at ``size``, reading features with
    the evaluation noise of image ``indices[b]`` (``seeds.noise(seed, EVAL_STREAM, index)``)."""
    hw = (int(size[0]), int(size[1]))

    def predict(images: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = feats(images, [seeds.noise(seed, seeds.EVAL_STREAM, int(i)) for i in indices])
        probs, unc = head.predict(f, hw)
        return probs.argmax(1), unc

    return predict


FEATURE_KEYS = ("blocks", "timesteps", "concat_timesteps", "noise_draws")


def teacher_for_head(path: str, teacher_cfg: Any, head: Any, amp: str = "auto") -> Any:
    """The teacher in ``path`` with the feature options ``head`` was trained on (blocks, timesteps,
    ...; they override the ``teacher`` config section, each override logged), so a head reads the
    maps it was sized for."""
    from omegaconf import OmegaConf

    from dtlabel.teachers import teacher_from_config

    opts = OmegaConf.to_container(teacher_cfg, resolve=True) if not isinstance(teacher_cfg, dict) else dict(teacher_cfg)
    trained = (head.meta.get("teacher") or {}).get("kwargs") or {}
    for key in FEATURE_KEYS:
        if key in trained and trained[key] is not None and opts.get(key) != trained[key]:
            log.info("teacher.%s=%s from the head's descriptor (config: %s)", key, trained[key], opts.get(key))
            opts[key] = trained[key]
    return teacher_from_config(path, opts, amp=amp)


def open_head_with_teacher(head_path: str, teacher_path: str, teacher_cfg: Any, device: torch.device,
                           amp: str = "auto") -> tuple[Any, Any]:
    """``(head, teacher)`` on ``device``: the head of a train-head run (or its ``head/`` folder) and the
    teacher in ``teacher_path`` read with the head's feature options (:func:`teacher_for_head`). A
    teacher whose hash is not the one the head was trained on is one ``ModelError`` line: its
    features would not be the ones the head learned on. What scoring, synthesize, pretrain (mix
    distillation) and suggest open."""
    from dtlabel.errors import ModelError
    from dtlabel.heads import load_head

    head = load_head(str(head_path), device)
    teacher = teacher_for_head(str(teacher_path), teacher_cfg, head, amp).to(device)
    want, have = head.meta.get("teacher_hash"), teacher.teacher_hash()
    if want and have != want:
        raise ModelError(f"--teacher {teacher_path} is not the teacher the head was trained on (--head {head_path} "
                         f"was trained on teacher {str(want)[:12]}, this one is {have[:12]}); pass that teacher's folder")
    return head, teacher
