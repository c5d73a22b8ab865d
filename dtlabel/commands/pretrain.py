"""``dtlabel pretrain --teacher T [--images DIR | data=...] [--head H] --out RUN``: DreamTeacher pretraining.

A timm backbone + FPN/PPM regressor learns, with no labels, to regress the frozen teacher's
multi-scale features of the label-free pool (fresh noise every step, flips only); with ``--head``
(a train-head run on the same teacher) it also distils the head's soft labels (mix distillation).
Outputs: ``backbone/`` (timm ``features_only`` weights + ``backbone.json``; ``train-student
--backbone RUN`` starts a student from it), ``features.png`` (teacher vs regressed maps),
``loss.png``, ``metrics.jsonl``. The task is ``dtlabel/pretrain/task.py``; the engine gives resume,
the time budget, DDP and ``amp``. As with fit-teacher (a long label-free stage trained over several
sittings), a run stopped by ``pretrain.max_minutes`` exports the backbone reached so far
(``stopped_early`` in ``run.json``) and ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dtlabel import dist
from dtlabel.data import build_data, data_size, label_free_pool
from dtlabel.data.transforms import ImageDataset, build_transform, to_uint8
from dtlabel.device import precision, select_device, training_amp
from dtlabel.engine import train
from dtlabel.errors import ConfigError, DataError
from dtlabel.heads.reading import TeacherFeatures, open_head_with_teacher
from dtlabel.pretrain.export import BACKBONE, save_backbone, save_feature_pca
from dtlabel.pretrain.losses import teacher_norm
from dtlabel.pretrain.model import STRIDES, DistillationNet, create_backbone, match_levels
from dtlabel.pretrain.sampled import SampledPretrainTask
from dtlabel.pretrain.task import PretrainTask
from dtlabel.report import save_training_curves
from dtlabel.runs import Run, read_run
from dtlabel.teachers import resolve_model_root, teacher_from_config
from dtlabel.teachers.cache import FeatureCache

log = logging.getLogger(__name__)


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    pc = cfg.pretrain
    if not cfg.inputs.get("teacher"):
        raise ConfigError("pretrain needs --teacher DIR (a fit-teacher run folder or a local diffusers model folder)")
    resolve_model_root(str(cfg.inputs.teacher))
    if cfg.inputs.get("head"):
        read_run(str(cfg.inputs.head), "train-head", "--head")
    device = dist.init_from_env(select_device(cfg.device))
    # under amp=auto, pretrain.cpu_bf16 trains (and reads the teacher) in bf16 on a CPU with bf16 instructions
    cfg.amp = training_amp(str(cfg.amp), bool(pc.get("cpu_bf16", False)), device)
    try:
        return _run(run, cfg, pc, device, args)
    finally:
        dist.cleanup()


def _teacher(cfg: DictConfig, device: torch.device) -> tuple[Any, Any]:
    """``(head or None, teacher)``: with ``--head`` (mix distillation) the head and the teacher it was
    trained on, read with its options and checked by hash; else the teacher alone."""
    if cfg.inputs.get("head"):
        return open_head_with_teacher(str(cfg.inputs.head), str(cfg.inputs.teacher), cfg.teacher, device, str(cfg.amp))
    return None, teacher_from_config(str(cfg.inputs.teacher), cfg.teacher, amp=str(cfg.amp)).to(device)


def _run(run: Run, cfg: DictConfig, pc: DictConfig, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    seed = int(cfg.seed)
    size = data_size(cfg.data)
    head, teacher = _teacher(cfg, device)
    images, data_name = _pool(cfg, pc, teacher, size)
    mapping = OmegaConf.to_container(pc.mapping, resolve=True) if pc.get("mapping") is not None else None
    spec = teacher.feature_spec
    levels = match_levels(spec, teacher.image_size, size, mapping)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    net = DistillationNet(create_backbone(str(pc.backbone), size, str(pc.vit_pyramid)), spec, levels, int(pc.width),
                          num_classes=head.num_classes if head is not None else 0).to(device)
    task = _task(run, cfg, pc, net, teacher, head, images, size, device)
    matched = {n: {"level": lv, "backbone_stride": STRIDES[lv], "teacher_stride": s, "teacher_size": list(teacher.image_size),
                   "compared_at": "teacher map size (regressed map resized bilinearly)"}
               for (n, _, s), lv in zip(spec, [levels[n] for n in spec.names])}
    log.info("pretrain %s (%.2fM parameters with the regressor) on %s at %dx%d: %d steps x batch %d, lr %.2e; "
             "teacher %s %dx%d, maps -> levels %s%s", pc.backbone, sum(p.numel() for p in net.parameters()) / 1e6,
             f"{len(images)} images" if images is not None else "the teacher's samples", *size, task.total, task.batch,
             task.lr, teacher.family, *teacher.image_size, {n: f"stride {STRIDES[lv]}" for n, lv in levels.items()},
             ", mix distillation" if head is not None else "")
    result = train(task, task.loop_config(str(cfg.amp), pc.get("max_minutes")), run.path, device,
                   progress=not getattr(args, "quiet", False))
    if result.stopped and result.schedule == "budget":  # the planned end: the cosine ends with the budget
        log.info("pretrain: ended by its time budget (pretrain.max_minutes, the lr schedule's end) at step %d",
                 result.steps)
    elif result.stopped:  # like fit-teacher: the backbone reached so far is exported, --resume continues
        log.warning("pretrain: stopped by pretrain.max_minutes at step %d of %d; the backbone so far exported",
                    result.steps, result.total)
    desc = {"timm_name": str(pc.backbone), "out_strides": list(STRIDES),
            # a ViT is saved whole (timm.create_model(name)), a CNN as its features_only model
            "features_only": net.exported_backbone is net.backbone,
            "teacher_hash": teacher.teacher_hash(), "teacher": teacher.describe(), "mapping": matched,
            "teacher_norm": str(pc.teacher_norm), "steps": result.steps, "steps_planned": result.total, "stopped_early": result.stopped,
            "schedule": result.schedule, "images_seen": result.steps * task.batch,
            "source": "images" if images is not None else "samples",
            "pool_size": len(images) if images is not None else None, "data": data_name, "data_size": list(size),
            "mix": head is not None, "head": str(cfg.inputs.head) if head is not None else None,
            "cache_draws": int(pc.get("cache_draws") or 0)}
    if dist.is_main():
        save_backbone(run.path / BACKBONE, net.exported_backbone, **desc)
        save_training_curves(run.path, f"pretrain {pc.backbone}", "L_MSE + w_AT L_AT" + (" + KD" if head else ""))
        if int(pc.pictures) > 0:
            n = int(pc.pictures) if images is None else min(int(pc.pictures), len(images))
            _pictures(run, task, net, images, n, str(pc.teacher_norm), result.steps)
    dist.barrier()
    log.info("pretrain: %d steps, final loss %.4f; backbone in %s", result.steps, result.loss_ema, run.path / BACKBONE)
    return {"backbone": BACKBONE, **{k: v for k, v in desc.items() if k != "teacher"},
            "final_loss": round(result.loss_ema, 6), "world_size": dist.world_size(),
            "precision": precision(device, str(cfg.amp))}


def _pool(cfg: DictConfig, pc: DictConfig, teacher: Any, size: Any) -> tuple[ImageDataset | None, str]:
    """``(the label-free pool's images, the data set's name)``, or ``(None, "samples")`` when the run
    regresses the teacher's own samples: ``pretrain.source=samples``, or ``auto`` with a teacher
    that cannot read real images (a GAN without its encoder)."""
    source = str(pc.source)
    if source == "auto":
        source = "images" if teacher.reads_images else "samples"
    if source == "samples":
        if str(cfg.data.get("kind")) == "images":
            raise ConfigError("pretrain.source=samples draws its images from the teacher; drop --images DIR "
                              "(or set pretrain.source=images)")
        if int(pc.get("cache_draws") or 0):
            raise ConfigError("pretrain.cache_draws caches features of pool images; samples are drawn once "
                              "(drop it with pretrain.source=samples)")
        return None, "samples"
    bundle = build_data(cfg.data)
    source_images = label_free_pool(bundle, bool(pc.include_labeled))
    if source_images is None:
        raise DataError(f"data set {bundle.name} has no images to pretrain on; pass --images DIR")
    return ImageDataset(source_images, None, build_transform(size, train=False)), bundle.name


def _task(run: Run, cfg: DictConfig, pc: DictConfig, net: DistillationNet, teacher: Any, head: Any,
          images: ImageDataset | None, size: Any, device: torch.device) -> PretrainTask:
    """The engine task: pool images (with the optional feature cache) or the teacher's samples."""
    chunk = int(pc.teacher_batch) if pc.get("teacher_batch") else None
    if images is None:
        return SampledPretrainTask(net, TeacherFeatures(teacher, None, chunk=chunk), pc, int(cfg.seed), device,
                                   size, head)
    cache_draws = int(pc.get("cache_draws") or 0)
    cache = None
    if cache_draws:
        cache = FeatureCache(Path(str(pc.cache_dir)) if pc.get("cache_dir") else run.path / "feature_cache")
        log.info("pretrain: teacher features cached in %s (%d noise draws per image and flip)", cache.root,
                 cache_draws)
    return PretrainTask(net, TeacherFeatures(teacher, cache, chunk=chunk), images, pc, int(cfg.seed), device,
                        int(cfg.num_workers), head)


@torch.no_grad()
def _pictures(run: Run, task: PretrainTask, net: DistillationNet, images: ImageDataset | None, n: int, norm: str,
              steps: int) -> None:
    x, teacher = task.picture_batch(images, n)
    net.eval()
    regressed, _ = net(x.to(task.device))
    save_feature_pca(run.path / "features.png", to_uint8(x), {k: teacher_norm(v.float(), norm).cpu() for k, v in teacher.items()},
                     {k: v.cpu() for k, v in regressed.items()}, title=f"pretrain after {steps} steps: teacher vs regressed "
                     "maps (first 3 principal components of each teacher map)")
