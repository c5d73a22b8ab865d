"""``dtlabel eval --student DIR`` (or ``--head DIR [--teacher DIR]``): a model on a labeled split.

Writes ``metrics.json`` (per-class IoU, mIoU, pixel accuracy, confusion matrix; percent),
``overlays.png`` (image / ground truth / prediction), ``iou.png`` (per-class bars) and
``confusion.png`` (row-normalised confusion matrix). The resolution is the one the model was
trained at unless ``size=[H,W]`` is given. Students come from ``train-student`` runs; heads from
``train-head`` runs, evaluated with their teacher (``--teacher``, default the one recorded in
the head's run) and the evaluation noise of train-head.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from dtlabel.data import build_data
from dtlabel.device import amp_dtype, select_device
from dtlabel.errors import ConfigError, DataError, ModelError
from dtlabel.io import write_json
from dtlabel.metrics import ConfusionMatrix
from dtlabel.report import overlay, save_bars, save_confusion, save_grid
from dtlabel.runs import Run, read_run

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def pictures(out: Path, samples: list, names: list[str], ignore: int, summary: dict[str, Any], cm: ConfusionMatrix,
             title: str, confusion: bool = True) -> None:
    """``overlays.png`` (samples ``(image, mask, pred, ...)``), ``iou.png`` and ``confusion.png``."""
    c = len(names)
    if samples:
        rows = [[s[0], overlay(s[0], s[1], c, ignore_index=ignore), overlay(s[0], s[2], c, ignore_index=ignore)]
                for s in samples]
        save_grid(out / "overlays.png", rows, titles=["image", "ground truth", "prediction"], class_names=names,
                  suptitle=title)
    values = [v if v is not None else 0.0 for v in summary["per_class_iou"].values()]
    miou = summary["miou"] if summary["miou"] is not None else float("nan")
    save_bars(out / "iou.png", names, values, title=f"{title}: mIoU {miou:.1f}")
    if confusion:
        save_confusion(out / "confusion.png", cm.matrix.cpu().numpy(), names, title=title)


def _check_classes(model_names: list[str] | None, n_model: int, source: Any, what: str) -> None:
    if n_model != source.num_classes:
        raise DataError(f"{what} predicts {n_model} classes but the data set has {source.num_classes}; "
                        "evaluate on the data set it was trained for (data=...)")
    if model_names and list(model_names) != list(source.class_names):
        log.warning("class names of the %s %s differ from the data's %s", what, model_names, list(source.class_names))


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    student_dir, head_dir = cfg.inputs.get("student"), cfg.inputs.get("head")
    if bool(student_dir) == bool(head_dir):
        raise ConfigError("eval needs exactly one of --student DIR (train-student run) or --head DIR (train-head run)")
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    device = select_device(cfg.device)
    if student_dir:
        from dtlabel.students import load_student

        model, desc = load_student(str(student_dir), device)
        train_size = desc.get("data_size")
        kind = f"student {desc['arch']}/{desc['encoder_name']}"
        n_classes, model_names = int(desc["classes"]), desc.get("class_names")
    else:
        from dtlabel.heads import load_head

        hdesc = read_run(str(head_dir), "train-head", "--head")
        head = load_head(str(head_dir), device)
        train_size = head.meta.get("data_size") or hdesc.get("size")
        kind = f"head {head.kind}"
        n_classes, model_names = head.num_classes, head.meta.get("class_names")
    size_v = cfg.get("size") or train_size
    if not size_v or len(size_v) != 2:
        raise ConfigError("eval: pass size=[H,W] (the model does not record its training resolution)")
    size = (int(size_v[0]), int(size_v[1]))
    bundle = build_data(cfg.data)
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; eval needs a labeled data set")
    source = bundle.labeled
    ids = list(bundle.splits.get(split) or [])
    if not ids:
        raise DataError(f"data set {bundle.name} has no '{split}' split (or it is empty); choose --split "
                        f"{' or '.join(s for s in SPLITS if bundle.splits.get(s)) or 'test'}")
    _check_classes(model_names, n_classes, source, kind)
    keep, bs, nw = int(cfg.overlays), int(cfg.batch_size), int(cfg.num_workers)
    extra: dict[str, Any] = {}
    if student_dir:
        from dtlabel.commands.train_student import evaluate

        cm, samples = evaluate(model, source, ids, size, bs, device, amp_dtype(device, str(cfg.amp)), keep=keep,
                               num_workers=nw)
        extra["student"] = str(student_dir)
    else:
        from dtlabel.commands.train_head import TeacherFeatures
        from dtlabel.commands.train_head import evaluate as evaluate_head
        from dtlabel.teachers import teacher_from_config
        from dtlabel.teachers.base import resolve_model_root

        teacher_dir = cfg.inputs.get("teacher") or hdesc.get("teacher")
        if not teacher_dir:
            raise ConfigError("eval --head needs --teacher DIR (the head's run does not record its teacher)")
        resolve_model_root(str(teacher_dir))
        teacher = teacher_from_config(str(teacher_dir), cfg.teacher, amp=str(cfg.amp)).to(device)
        want = head.meta.get("teacher_hash")
        if want and teacher.teacher_hash() != want:
            raise ModelError(f"--teacher {teacher_dir} is not the teacher the head was trained on (hash "
                             f"{teacher.teacher_hash()[:12]} vs {str(want)[:12]}); pass that teacher's folder")
        seed = int(head.meta.get("seed", cfg.seed))
        cm, samples, scores = evaluate_head(head, TeacherFeatures(teacher), source, ids, size, bs, seed, keep=keep,
                                            num_workers=nw)
        extra.update(head=str(head_dir), teacher=str(teacher_dir),
                     mean_uncertainty=float(np.mean(scores)) if scores else None)
    names = list(source.class_names)
    s = cm.summary(names)
    metrics = {
        "units": "percent; IoU of classes absent from both ground truth and prediction is null and not averaged",
        "model": kind, "split": split, "n_images": len(ids), "size": list(size), "data": bundle.name,
        "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], "per_class_iou": s["per_class_iou"],
        "classes_counted": s["classes_counted"], "pixels": s["pixels"], "confusion_matrix": cm.matrix.tolist(), **extra,
    }
    write_json(run.path / "metrics.json", metrics)
    pictures(run.path, samples, names, source.ignore_index, s, cm, f"{kind} on {bundle.name} {split}")
    log.info("%s on %s %s (%d images): mIoU %s, pixel accuracy %s", kind, bundle.name, split, len(ids), s["miou"],
             s["pixel_accuracy"])
    return {"model": kind, "split": split, "data": bundle.name, "n_images": len(ids), "size": list(size),
            "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], **extra}
