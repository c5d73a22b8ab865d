"""A trained model from its run folder, ready to score a labeled split: what ``dtlabel eval`` and the
reports (``dtlabel report``, the demo's prediction grid) share.

A ``train-student`` run scores on its own; a ``train-head`` run needs its teacher, read exactly as the
head was trained (blocks, timesteps from the head's descriptor) and checked by hash, so a head is
never scored on features it was not sized for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dtlabel.errors import ConfigError, DataError
from dtlabel.runs import read_run


@dataclass
class ScorableModel:
    """A student or a head with what scoring needs.

    ``kind`` is a label for logs and tables ("student Unet/resnet18", "head interpreter");
    ``train_size`` the ``(H, W)`` it was trained at (None when the run does not record it).
    """

    kind: str
    num_classes: int
    class_names: list[str] | None
    train_size: tuple[int, int] | None
    device: torch.device
    extra: dict[str, Any]
    _score: Any

    def score(self, source: Any, ids: Sequence[str], size: tuple[int, int], batch_size: int, keep: int = 0,
              num_workers: int = 0, progress: bool = False) -> Any:
        """:class:`~dtlabel.evaluation.Evaluation` on ``ids`` of ``source`` at ``size``; ``keep`` samples
        ``(image (H, W, 3) uint8, truth (H, W), prediction (H, W)[, uncertainty (H, W)])`` come back in
        ``.samples`` for pictures."""
        return self._score(source, list(ids), size, batch_size, keep, num_workers, progress)

    def check_classes(self, source: Any, log: Any = None) -> None:
        """A model of another class count cannot be scored on ``source``: one clear error."""
        if self.num_classes != source.num_classes:
            raise DataError(f"{self.kind} predicts {self.num_classes} classes but the data set has "
                            f"{source.num_classes}; evaluate on the data set it was trained for (data=...)")
        if log is not None and self.class_names and list(self.class_names) != list(source.class_names):
            log.warning("class names of the %s %s differ from the data's %s", self.kind, self.class_names,
                        list(source.class_names))


def _size(value: Any) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value and len(value) == 2 else None


def open_student(path: str, device: torch.device, amp: str = "auto") -> ScorableModel:
    """The selected student of a finished ``train-student`` run."""
    from dtlabel.students import load_student
    from dtlabel.students.task import score_student

    model, desc = load_student(str(path), device)

    def score(source, ids, size, bs, keep, nw, progress):
        return score_student(model, source, ids, size, bs, device, amp, keep=keep, num_workers=nw, progress=progress)

    return ScorableModel(f"student {desc['arch']}/{desc['encoder_name']}", int(desc["classes"]),
                         desc.get("class_names"), _size(desc.get("data_size")), device, {"student": str(path)}, score)


def open_head(path: str, device: torch.device, teacher_cfg: Any, teacher_dir: str | None = None,
              amp: str = "auto", seed: int = 0) -> ScorableModel:
    """The head of a finished ``train-head`` run with its teacher (``teacher_dir``, default the one its
    run records), read with the head's own feature options; refuses another teacher (hash)."""
    from dtlabel.heads.reading import TeacherFeatures, open_head_with_teacher
    from dtlabel.heads.task import score_head
    from dtlabel.teachers import resolve_model_root

    hdesc = read_run(str(path), "train-head", "--head")
    teacher_dir = teacher_dir or hdesc.get("teacher")
    if not teacher_dir:
        raise ConfigError(f"--head {path}: its run does not record its teacher; pass --teacher DIR")
    resolve_model_root(str(teacher_dir))
    head, teacher = open_head_with_teacher(str(path), str(teacher_dir), teacher_cfg, device, amp)
    feats = TeacherFeatures(teacher)
    seed = int(head.meta.get("seed", seed))  # the evaluation noise train-head used

    def score(source, ids, size, bs, keep, nw, progress):
        return score_head(head, feats, source, ids, size, bs, seed, keep=keep, num_workers=nw, progress=progress)

    return ScorableModel(f"head {head.kind}", head.num_classes, head.meta.get("class_names"),
                         _size(head.meta.get("data_size") or hdesc.get("size")), device,
                         {"head": str(path), "teacher": str(teacher_dir)}, score)
