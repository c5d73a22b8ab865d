"""``dtlabel train-head --labels N --teacher DIR``: a few-label head on a frozen teacher's features.

1. Check the inputs (head kind, --labels, --teacher, a labeled data set with a test split).
2. Choose N training ids with ``choose_labels`` (or take ``label_ids``) (``labels.json``) and a validation slice: the data
   set's ``val`` split if it has one, else a seeded slice of the training pool disjoint from the N
   ids. Model selection uses only that slice, never the test split.
3. Train: each step flips / scale-jitters image + mask at ``data.size``, resizes the image to the
   teacher's size and computes the teacher's features **online with fresh noise** (the seed depends
   on epoch and image: the paper's feature-space augmentation); ``head.cache=true`` instead reads
   features of the un-augmented images from a disk cache (``cache_draws`` noise draws per image,
   horizontal flips applied to features + mask). Logits are compared with masks at ``data.size``.
   AdamW, cosine schedule.
4. Evaluate on the test split: ``metrics.json`` (per-class IoU, mIoU, pixel accuracy, also on the
   validation slice), ``overlays.png``, ``iou.png``, ``loss.png``; weights + descriptor in ``head/``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dtlabel import dist
from dtlabel.data import build_data, data_size
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.splits import LabelSplit, split_labels
from dtlabel.device import precision, select_device, training_amp
from dtlabel.engine import train
from dtlabel.errors import ConfigError, DataError
from dtlabel.heads import create_head, head_class
from dtlabel.heads.reading import TeacherFeatures
from dtlabel.heads.task import HeadTask, check_head_options, head_kwargs, score_head
from dtlabel.io import write_json
from dtlabel.metrics import write_metrics
from dtlabel.report import save_eval_pictures, save_training_curves
from dtlabel.runs import Run, TimeBudgetReached
from dtlabel.labeling_set import attach_latents, is_labeling_set
from dtlabel.teachers import resolve_model_root, teacher_from_config
from dtlabel.teachers.cache import FeatureCache

log = logging.getLogger(__name__)


def _int_option(value: Any, flag: str, what: str) -> int:
    if value is None:
        raise ConfigError(f"train-head needs {flag} ({what})")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r}: expected an integer ({what})") from None


def _check_data(bundle: DataBundle) -> LabeledSource:
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; train-head needs a labeled data set "
                        "(data=default, data=ccp, data=folder data.root=PATH, data=coco ...)")
    if not bundle.splits.get("train"):
        raise DataError(f"data set {bundle.name} has no training images; set data.splits.train")
    if not bundle.splits.get("test"):
        raise DataError(f"data set {bundle.name} has no test split; set data.splits.test (train-head evaluates on it)")
    return bundle.labeled


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    hc = cfg.head
    kind = str(hc.kind)
    head_class(kind)  # unknown kind: one line with close matches, before anything else
    n_labels = (_int_option(cfg.get("labels"), "--labels N", "how many labeled training images to use")
                if cfg.get("label_ids") is None or cfg.get("labels") is not None else None)  # None: label_ids decides
    if not cfg.inputs.get("teacher"):
        raise ConfigError("train-head needs --teacher DIR (a fit-teacher run folder or a local diffusers model folder)")
    resolve_model_root(str(cfg.inputs.teacher))  # "not found" before reading any data
    check_head_options(hc)
    device = dist.init_from_env(select_device(cfg.device))
    # under amp=auto the preset's head.cpu_bf16 trains (and reads the teacher) in bf16 on a CPU with bf16 instructions
    cfg.amp = training_amp(str(cfg.amp), bool(hc.get("cpu_bf16", False)), device)
    try:
        return _run(run, cfg, hc, kind, n_labels, device, args)
    finally:
        dist.cleanup()


def _run(run: Run, cfg: DictConfig, hc: DictConfig, kind: str, n_labels: int | None, device: torch.device,
         args: argparse.Namespace) -> dict[str, Any]:
    seed = int(cfg.seed)
    size = data_size(cfg.data)
    bundle = build_data(cfg.data)
    source = _check_data(bundle)
    label_seed = int(hc.label_seed) if hc.get("label_seed") is not None else seed
    split = split_labels(bundle, source, n_labels, cfg.get("label_ids"), label_seed, int(hc.val_size))
    label_ids, val_ids, val_origin, test_ids = split.label_ids, split.val_ids, split.val_from, split.test_ids
    n_labels = len(label_ids)
    teacher = teacher_from_config(str(cfg.inputs.teacher), cfg.teacher, amp=str(cfg.amp)).to(device)
    if is_labeling_set(cfg.data.get("root")):  # DatasetGAN: labelled samples, read at their stored latents
        attach_latents(str(cfg.data.root), teacher, size)
        if hc.get("scale") is not None:
            log.info("train-head: head.scale=null (a scale-jittered sample has no stored latent)")
            hc.scale = None
    if dist.is_main():
        write_json(run.path / "labels.json", split.record())
    spec = teacher.feature_spec
    log.info("train-head %s: %d labels of %d, %d validation (%s), %d test; teacher %s %dx%d, features %s (D=%d)",
             kind, n_labels, len(bundle.splits["train"]), len(val_ids), val_origin, len(test_ids), teacher.family,
             *teacher.image_size, ", ".join(spec.names), spec.total_channels)

    torch.manual_seed(seed)
    head = create_head(kind, spec, source.num_classes, **head_kwargs(hc, kind)).to(device)
    cache = None
    if bool(hc.cache):
        cache = FeatureCache(Path(str(hc.cache_dir)) if hc.get("cache_dir") else run.path / "feature_cache")
    feats = TeacherFeatures(teacher, cache, chunk=int(hc.teacher_batch) if hc.get("teacher_batch") else None)
    task = HeadTask(head, feats, source, label_ids, val_ids, size, hc, seed, int(cfg.num_workers))
    log.info("training %s (%.2fM parameters): %d steps (%d per pass over the labels, batch %d)%s", kind,
             sum(p.numel() for p in head.parameters()) / 1e6, task.total, task.epoch_steps, task.batch,
             ", cached features" if cache is not None else ", online features")
    result = train(task, task.loop_config(str(cfg.amp), hc.get("max_minutes")), run.path, device,
                   progress=not getattr(args, "quiet", False))
    if result.stopped:
        raise TimeBudgetReached("train-head", result.steps, result.total)
    head.eval()

    test, val = _finish(run, cfg, result, task, head, feats, teacher, source, split, size)
    return {
        "head": "head", "kind": kind, "num_classes": source.num_classes, "class_names": list(source.class_names),
        "labels": n_labels, "label_ids": label_ids, "teacher_hash": teacher.teacher_hash(),
        "teacher": str(cfg.inputs.teacher), "feature_spec": spec.to_dict(), "data": bundle.name, "size": list(size),
        "steps": result.steps, "epochs": result.steps // task.epoch_steps, "schedule": result.schedule,
        "test_miou": test["miou"],
        "val_miou": (val or {}).get("miou"), "cache": bool(hc.cache), "world_size": dist.world_size(),
        "precision": precision(device, str(cfg.amp)), "validation": {"images": len(val_ids), "from": val_origin},
    }


def _finish(run: Run, cfg: DictConfig, result: Any, task: HeadTask, head: Any, feats: TeacherFeatures, teacher: Any,
            source: Any, split: LabelSplit, size: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score the selected head on the test split; rank 0 writes metrics.json, the pictures and the
    head folder. Returns (test scores, validation scores or None)."""
    hc, names, seed = cfg.head, list(source.class_names), int(cfg.seed)
    n_test, n_labels = len(split.test_ids), len(split.label_ids)
    ev = score_head(head, feats, source, split.test_ids, size, int(hc.eval_batch_size), seed,
                    keep=int(hc.overlays) if dist.is_main() else 0, num_workers=int(cfg.num_workers))
    val = result.validation() if split.val_ids else None
    selected = result.selection(task.epoch_steps)
    test: dict[str, Any] = ev.cm.summary(names)
    if dist.is_main():
        test = write_metrics(run.path / "metrics.json", ev.cm, names, "test", n_test, size, n_test=n_test,
                             uncertainty={"kind": head.uncertainty_kind, "mean_image_score": ev.mean_score},
                             val=val, selected=selected, labels=n_labels, head=head.kind)
        title = f"{head.kind}, {n_labels} labels"
        save_eval_pictures(run.path, ev.samples, names, source.ignore_index, test, f"{title}: test samples")
        save_training_curves(run.path, f"train-head {title}")
        head.save(run.path / "head", teacher_hash=teacher.teacher_hash(), class_names=names, label_ids=split.label_ids,
                  ignore_index=source.ignore_index, data=split.data, data_size=list(size),
                  image_size=list(teacher.image_size), teacher=teacher.describe(), val_ids=split.val_ids, seed=seed)
    dist.barrier()
    log.info("test: mIoU %s, pixel accuracy %s (%d images)", test["miou"], test["pixel_accuracy"], n_test)
    return test, val
