"""Labelers: the finished models that pseudo-label a pool, behind one ``predict``.

``synthesize`` labels images with a *labeler*:

- :class:`HeadLabeler`: a train-head run on its teacher's features (``--head`` / ``--labeler HEAD_RUN``);
- :class:`StudentLabeler`: a train-student run on the images alone, no teacher needed
  (``--labeler STUDENT_RUN``): self-training, and iterated distillation;
- :class:`EnsembleLabeler`: several of them (``--ensemble RUN RUN ...``): the mean of the members'
  probabilities, uncertainty = their Jensen-Shannon divergence ``H(mean p) - mean H(p_k)``, the
  disagreement score of the mlp-ensemble head.

Every labeler maps ``images (B, 3, H, W)`` in [-1, 1] (CPU, at the synth size), one noise seed per
image and the output ``size`` to ``probs (B, C, H, W)`` float32 and ``uncertainty (B, H, W)`` in nats.
A head may be handed the features its teacher computed while sampling those images (``--n``);
otherwise it encodes the images itself with the given seeds, as ``synthesize --images`` always did.
``describe()`` names the models and their hashes (the run descriptor and the manifest keep it), and
``meta`` merges what the pool mode and the students need from the members: data set, class names,
labeled and validation ids (never pseudo-labeled).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError, ModelError
from dtlabel.io import sha256_bytes, sha256_file



class Labeler(ABC):
    """A finished model that turns images into class probabilities and an uncertainty map."""

    kind: str = ""
    uncertainty_kind: str = ""
    needs_teacher: bool = False

    def __init__(self, path: str, num_classes: int, meta: dict[str, Any]) -> None:
        self.path, self.num_classes, self.meta = str(path), int(num_classes), meta

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [f"class_{k}" for k in range(self.num_classes)])

    @abstractmethod
    def hash(self) -> str:
        """Short hash of the model's descriptor and weights (16 hex digits)."""

    @abstractmethod
    def predict(self, images: torch.Tensor, seeds: Sequence[int], size: tuple[int, int],
                features: dict[str, torch.Tensor] | None = None,
                teacher: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (B, C, *size), uncertainty (B, *size))`` for ``images (B, 3, H, W)`` in [-1, 1]."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "hash": self.hash()}


class HeadLabeler(Labeler):
    """A train-head run and the teacher whose features it reads (the teacher of its descriptor)."""

    kind = "head"
    needs_teacher = True

    def __init__(self, path: str, head: Any, teacher: Any) -> None:
        super().__init__(path, head.num_classes, dict(head.meta))
        self.head, self.teacher = head, teacher
        self.uncertainty_kind = head.uncertainty_kind
        self.head_kind = head.kind

    def hash(self) -> str:
        return head_hash(self.path)

    def predict(self, images: torch.Tensor, seeds: Sequence[int], size: tuple[int, int],
                features: dict[str, torch.Tensor] | None = None,
                teacher: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        from dtlabel.heads import to_teacher_size

        if features is None or teacher is not self.teacher:  # features of another teacher's set-up: read our own
            x = to_teacher_size(images, self.teacher.image_size).to(self.teacher.device)
            features = self.teacher.features(x, seed=[int(s) for s in seeds])
        return self.head.predict(features, size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "head_kind": self.head_kind,
                "teacher_hash": self.meta.get("teacher_hash")}


class StudentLabeler(Labeler):
    """A train-student run: images resized to the size it trained at, softmax of its logits,
    uncertainty = predictive entropy. Needs no teacher."""

    kind = "student"
    uncertainty_kind = "predictive entropy (nats)"

    def __init__(self, path: str, model: torch.nn.Module, desc: dict[str, Any], device: torch.device,
                 amp: str = "auto") -> None:
        from dtlabel.device import amp_dtype

        super().__init__(path, int(desc["classes"]), dict(desc))
        self.model, self.device, self.dtype = model, device, amp_dtype(device, amp)
        self.folder = Path(desc["_folder"])
        self.size = tuple(int(s) for s in desc.get("data_size") or ()) or None

    def hash(self) -> str:
        from dtlabel.students import DESCRIPTOR, WEIGHTS

        return sha256_bytes((sha256_file(self.folder / DESCRIPTOR) + sha256_file(self.folder / WEIGHTS)).encode())[:16]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, seeds: Sequence[int], size: tuple[int, int],
                features: dict[str, torch.Tensor] | None = None,
                teacher: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        from dtlabel.device import autocast
        from dtlabel.heads import entropy, to_teacher_size

        x = images if self.size is None else to_teacher_size(images, self.size)
        with autocast(self.device, self.dtype):
            logits = self.model(x.to(self.device))
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        return probs, entropy(probs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": self.meta.get("arch"), "encoder": self.meta.get("encoder_name"),
                "test_miou": self.meta.get("test_miou")}


class EnsembleLabeler(Labeler):
    """The mean of the members' probabilities; uncertainty = their Jensen-Shannon divergence."""

    kind = "ensemble"
    uncertainty_kind = "Jensen-Shannon divergence of the members (nats)"

    def __init__(self, members: Sequence[Labeler]) -> None:
        first = members[0]
        for m in members[1:]:
            if m.class_names != first.class_names:
                raise ModelError(f"--ensemble: {m.path} was trained on classes {m.class_names} but {first.path} on "
                                 f"{first.class_names}; every member must predict the same class list")
        meta = {"class_names": first.class_names, "data": _agreed(members, "data"),
                "data_size": first.meta.get("data_size"),
                "label_ids": _union(members, "label_ids"), "val_ids": _union(members, "val_ids")}
        super().__init__("+".join(m.path for m in members), first.num_classes, meta)
        self._members = list(members)
        self.needs_teacher = any(m.needs_teacher for m in members)

    def hash(self) -> str:
        return sha256_bytes("+".join(m.hash() for m in self._members).encode())[:16]

    def predict(self, images: torch.Tensor, seeds: Sequence[int], size: tuple[int, int],
                features: dict[str, torch.Tensor] | None = None,
                teacher: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        from dtlabel.heads import js_divergence

        probs = torch.stack([m.predict(images, seeds, size, features, teacher)[0].float().cpu()
                             for m in self._members])                           # (K, B, C, H, W)
        return probs.mean(0), js_divergence(probs.movedim(2, -1), dim=0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "hash": self.hash(),
                "members": [m.describe() for m in self._members]}


def _agreed(members: Sequence[Labeler], key: str) -> str | None:
    values = {m.meta.get(key) for m in members if m.meta.get(key)}
    if len(values) > 1:
        raise ModelError(f"--ensemble: the members were trained on different data sets ({', '.join(sorted(values))})")
    return next(iter(values), None)


def _union(members: Sequence[Labeler], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for m in members:
        seen.update(dict.fromkeys(str(i) for i in (m.meta.get(key) or [])))
    return list(seen)


# ------------------------------------------------------------------------------------------- loading
def head_folder(path: str | Path) -> Path:
    """A head folder, or a train-head run folder's ``head/``."""
    from dtlabel.heads.base import DESCRIPTOR

    p = Path(path)
    return p / "head" if not (p / DESCRIPTOR).is_file() and (p / "head" / DESCRIPTOR).is_file() else p


def head_hash(path: str | Path) -> str:
    """Short hash of a head folder's descriptor and weights."""
    from dtlabel.heads.base import DESCRIPTOR, WEIGHTS

    folder = head_folder(path)
    return sha256_bytes((sha256_file(folder / DESCRIPTOR) + sha256_file(folder / WEIGHTS)).encode())[:16]


def run_kind(path: str | Path) -> str:
    """``"head"`` or ``"student"``: what a run folder (or a bare head / student folder) holds;
    ``ModelError`` naming the path otherwise."""
    from dtlabel.heads.base import DESCRIPTOR as HEAD_DESCRIPTOR
    from dtlabel.students import DESCRIPTOR as STUDENT_DESCRIPTOR

    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise ModelError(f"labeler {p}: folder not found; pass a finished train-head or train-student run folder")
    if (p / HEAD_DESCRIPTOR).is_file() or (p / "head" / HEAD_DESCRIPTOR).is_file():
        return "head"
    if (p / STUDENT_DESCRIPTOR).is_file() or (p / "student" / STUDENT_DESCRIPTOR).is_file():
        return "student"
    raise ModelError(f"labeler {p}: neither a train-head nor a train-student run (no head/ or student/ folder; "
                     "an unfinished run has neither)")


def load_labeler(paths: Sequence[str], teacher_path: str | None, teacher_cfg: Any, device: torch.device,
                 amp: str = "auto") -> tuple[Labeler, Any]:
    """The labeler of ``paths`` (one run, or several: an ensemble) and the teacher it reads (None when
    every member is a student). Heads must have been trained on ``teacher_path``'s teacher."""
    from dtlabel.heads.base import DESCRIPTOR as HEAD_DESCRIPTOR
    from dtlabel.heads.reading import open_head_with_teacher
    from dtlabel.runs import read_run
    from dtlabel.students import load_student

    if not paths:
        raise ConfigError("synthesize needs a labeler: --head HEAD_RUN, --labeler RUN or --ensemble RUN RUN ...")
    kinds = [run_kind(p) for p in paths]
    if "head" in kinds and not teacher_path:
        raise ConfigError("synthesize needs --teacher DIR for a head labeler (the fit-teacher run or diffusers folder "
                          "the head was trained on)")
    members: list[Labeler] = []
    teacher = None
    for path, kind in zip(paths, kinds):
        p = Path(str(path))
        if kind == "head":
            if (p / "head" / HEAD_DESCRIPTOR).is_file():  # a run folder, not a bare head/ folder: finished?
                read_run(p, "train-head", "--head")
            head, own = open_head_with_teacher(str(p), str(teacher_path), teacher_cfg, device, amp)
            if teacher is not None and _same_features(teacher, own):
                own = teacher  # one teacher object: features read while sampling serve every such head
            teacher = teacher or own
            members.append(HeadLabeler(str(path), head, own))
        else:
            if (p / "student").is_dir():
                read_run(p, "train-student", "--labeler")
            model, desc = load_student(str(p), device)
            members.append(StudentLabeler(str(path), model, desc, device, amp))
    if len(members) > 256 or members[0].num_classes > 256:
        raise ModelError(f"the labeler has {members[0].num_classes} classes; shards store labels as uint8 (at most 256)")
    labeler = members[0] if len(members) == 1 else EnsembleLabeler(members)
    if teacher is None and teacher_path:
        from dtlabel.teachers import teacher_from_config

        teacher = teacher_from_config(str(teacher_path), teacher_cfg, amp=amp).to(device)  # to sample (--n)
    return labeler, teacher


def _same_features(a: Any, b: Any) -> bool:
    try:
        return a.teacher_hash() == b.teacher_hash() and a.describe().get("kwargs") == b.describe().get("kwargs")
    except Exception:  # noqa: BLE001 - teachers that cannot describe themselves are kept apart
        return False
