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
from dtlabel.errors import ConfigError, DataError
from dtlabel.metrics import write_metrics
from dtlabel.report import save_eval_pictures
from dtlabel.runs import Run
from dtlabel.scoring import open_head, open_student

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    student_dir, head_dir = cfg.inputs.get("student"), cfg.inputs.get("head")
    if bool(student_dir) == bool(head_dir):
        raise ConfigError("eval needs exactly one of --student DIR (train-student run) or --head DIR (train-head run)")
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    device = select_device(cfg.device)
    if student_dir:
        model = open_student(str(student_dir), device, str(cfg.amp))
    else:
        model = open_head(str(head_dir), device, cfg.teacher, cfg.inputs.get("teacher"), str(cfg.amp), int(cfg.seed))
    size_v = cfg.get("size") or model.train_size
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
    model.check_classes(source, log)
    ev = model.score(source, ids, size, int(cfg.batch_size), keep=int(cfg.overlays), num_workers=int(cfg.num_workers),
                     progress=not args.quiet)
    kind, extra = model.kind, dict(model.extra)
    if head_dir:
        extra["mean_uncertainty"] = ev.mean_score
    names = list(source.class_names)
    s = write_metrics(run.path / "metrics.json", ev.cm, names, split, len(ids), size, model=kind, data=bundle.name,
                      **extra)
    save_eval_pictures(run.path, ev.samples, names, source.ignore_index, s, f"{kind} on {bundle.name} {split}",
                       confusion=ev.cm.matrix.cpu().numpy())
    log.info("%s on %s %s (%d images): mIoU %s, pixel accuracy %s", kind, bundle.name, split, len(ids), s["miou"],
             s["pixel_accuracy"])
    return {"model": kind, "split": split, "data": bundle.name, "n_images": len(ids), "size": list(size),
            "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], **extra}
