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
from typing import Any

from omegaconf import DictConfig

from dtlabel.data import build_data
from dtlabel.device import select_device
from dtlabel.errors import ConfigError, DataError, ModelError
from dtlabel.metrics import write_metrics
from dtlabel.report import save_eval_pictures
from dtlabel.runs import Run, read_run

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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
        from dtlabel.students.task import score_student

        ev = score_student(model, source, ids, size, bs, device, str(cfg.amp), keep=keep, num_workers=nw,
                           progress=not args.quiet)
        extra["student"] = str(student_dir)
    else:
        from dtlabel.heads.reading import TeacherFeatures, teacher_for_head
        from dtlabel.heads.task import score_head
        from dtlabel.teachers import resolve_model_root

        teacher_dir = cfg.inputs.get("teacher") or hdesc.get("teacher")
        if not teacher_dir:
            raise ConfigError("eval --head needs --teacher DIR (the head's run does not record its teacher)")
        resolve_model_root(str(teacher_dir))
        teacher = teacher_for_head(str(teacher_dir), cfg.teacher, head, str(cfg.amp)).to(device)  # the head's reading
        want = head.meta.get("teacher_hash")
        if want and teacher.teacher_hash() != want:
            raise ModelError(f"--teacher {teacher_dir} is not the teacher the head was trained on (hash "
                             f"{teacher.teacher_hash()[:12]} vs {str(want)[:12]}); pass that teacher's folder")
        seed = int(head.meta.get("seed", cfg.seed))
        ev = score_head(head, TeacherFeatures(teacher), source, ids, size, bs, seed, keep=keep, num_workers=nw,
                        progress=not args.quiet)
        extra.update(head=str(head_dir), teacher=str(teacher_dir), mean_uncertainty=ev.mean_score)
    names = list(source.class_names)
    s = write_metrics(run.path / "metrics.json", ev.cm, names, split, len(ids), size, model=kind, data=bundle.name,
                      **extra)
    save_eval_pictures(run.path, ev.samples, names, source.ignore_index, s, f"{kind} on {bundle.name} {split}",
                       confusion=ev.cm.matrix.cpu().numpy())
    log.info("%s on %s %s (%d images): mIoU %s, pixel accuracy %s", kind, bundle.name, split, len(ids), s["miou"],
             s["pixel_accuracy"])
    return {"model": kind, "split": split, "data": bundle.name, "n_images": len(ids), "size": list(size),
            "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], **extra}
