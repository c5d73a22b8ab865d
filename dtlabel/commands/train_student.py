"""``dtlabel train-student``: a segmentation-models-pytorch student on pseudo-labels and/or real labels.

Inputs: ``--synth DIR`` (a finished ``dtlabel synthesize`` run, streamed from its shards),
``--labels N`` (N real labeled images, the same deterministic choice as ``train-head`` with the
same N and seed) or both, mixed per batch (``student.real_ratio`` of each batch is real). With
both, the default is two stages: the mixed stage in ``stage1/``, then ``student.stage2_epochs``
(null: ``epochs``) on the real labels alone from its selected weights, the same student as a
one-stage run followed by ``--init`` from it (the noisy-student / pseudo-label pre-training
schedule: the real labels get the last word, so the pseudo-labels' errors do not cap the student).

The losses, the synth augmentation and the per-epoch scoring are the task's
(``dtlabel/students/task.py``); the loop, mixed precision (``amp``), DDP under torchrun, the time
budget (``student.max_minutes``) and ``--resume`` to the same result are the engine's. Model
selection uses the validation slice (the data set's ``val`` split, else a seeded slice of the
training pool disjoint from the N labels and the head's labels), never the test split. Outputs:
``student/`` (safetensors + ``student.json``, and smp's hub format: ``smp.from_pretrained``),
``metrics.json``, ``metrics.jsonl``, ``overlays.png``, ``iou.png``, ``loss.png``, ``miou.png``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from typing import Any

import torch
from omegaconf import DictConfig

from dtlabel import dist
from dtlabel.data import build_data, data_size
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.splits import LabelSplit, split_labels
from dtlabel.device import precision, select_device, training_amp
from dtlabel.errors import ConfigError, DataError
from dtlabel.io import write_json
from dtlabel.metrics import write_metrics
from dtlabel.report import save_eval_pictures, save_training_curves
from dtlabel.runs import Run, read_run
from dtlabel.students import backbone_file, create_student, load_backbone, save_student
from dtlabel.students.model import init_from_student
from dtlabel.students.recipe import STAGE1, Trained, stage2_epochs, train_recipe
from dtlabel.students.task import (
    StudentTask,
    check_input_size,
    check_student_options,
    score_student,
    smp_kwargs,
)

log = logging.getLogger(__name__)


def check_data(bundle: DataBundle, command: str) -> LabeledSource:
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; {command} evaluates on a labeled test split "
                        "(data=default, data=ccp, data=folder data.root=PATH ...)")
    if not bundle.splits.get("test"):
        raise DataError(f"data set {bundle.name} has no test split; set data.splits.test ({command} evaluates on it)")
    return bundle.labeled


def open_synth(path: str, drop_uncertain: float, first: int | None = None) -> Any:
    """The ``SynthSet`` of a finished synthesize run, its first ``first`` samples (``RunError`` with the
    reason otherwise)."""
    read_run(path, "synthesize", "--synth")
    from dtlabel.synth import SynthSet

    return SynthSet(path, drop_uncertain=drop_uncertain, first=first)


def _drop_copies(synth: Any, source: LabeledSource, data_name: str, cfg: DictConfig, label_ids: list[str],
                 val_ids: list[str], test_ids: list[str]) -> None:
    """Refuse (or with ``student.drop_leaked`` drop) synth samples that are validation or test images;
    drop those that are the N labeled images (they train with their real labels)."""
    from dtlabel.synth.leaks import matching_samples

    hits = matching_samples(synth, source, data_name, cfg.data.get("root"),
                            {"labeled": label_ids, "validation": val_ids, "test": test_ids})
    leaked = sorted(set(hits["validation"]) | set(hits["test"]))
    if leaked and not bool(cfg.student.drop_leaked):
        from_pool = "data" in (synth.manifest.get("source") or {})
        fix = ("the synth set is this data set's pool, so this student's validation slice differs from the head's "
               "(another --labels, student.val_size or seed): use the head's, or pass student.drop_leaked=true"
               if from_pool else "synthesize the data set's pool (data=... without --images) or pass "
               "student.drop_leaked=true to drop them")
        raise DataError(f"--synth {cfg.inputs.synth}: {len(hits['validation'])} pseudo-labeled samples are validation "
                        f"and {len(hits['test'])} are test images of {data_name} (e.g. sample {leaked[0]}); they would "
                        f"leak into model selection and the test score: {fix}")
    if leaked:
        log.warning("dropped %d synth samples that are validation / test images of %s (student.drop_leaked)",
                    synth.exclude(leaked), data_name)
    if hits["labeled"]:
        log.info("dropped %d synth samples that are the labeled images (their real labels are used)",
                 synth.exclude(hits["labeled"]))
    if len(synth) < 1:
        raise DataError(f"--synth {cfg.inputs.synth}: no samples left once the copies of this data set's "
                        "labeled, validation and test images are dropped")


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    sc = cfg.student
    check_student_options(sc)
    kwargs = smp_kwargs(sc)
    n_labels = cfg.get("labels")
    synth_dir = cfg.inputs.get("synth")
    if n_labels is None and not synth_dir and cfg.get("label_ids") is None:
        raise ConfigError("train-student needs --labels N (real labels), --synth DIR (pseudo-labels) or both")
    if n_labels is not None:
        try:
            n_labels = int(n_labels)
        except (TypeError, ValueError):
            raise ConfigError(f"--labels {n_labels!r}: expected an integer") from None
    from dtlabel.students import check_encoder, resolve_arch

    resolve_arch(str(sc.arch))
    check_encoder(str(sc.encoder))
    if cfg.inputs.get("backbone"):
        backbone_file(str(cfg.inputs.backbone))
    if sc.get("unlabeled") == "unimatch" and (n_labels is None or synth_dir):
        raise ConfigError("student.unlabeled=unimatch trains on --labels N and the data set's label-free pool; "
                          "it takes no --synth (pseudo-labels are the other recipe)")
    if cfg.inputs.get("init"):
        if cfg.inputs.get("backbone"):
            raise ConfigError("pass --init (a whole student) or --backbone (an encoder), not both")
        read_run(str(cfg.inputs.init), "train-student", "--init")
    first = sc.get("synth_samples")
    if first is not None and not synth_dir:
        raise ConfigError(f"student.synth_samples={first} takes the first samples of a --synth set; pass --synth DIR")
    synth = open_synth(str(synth_dir), float(sc.drop_uncertain), first) if synth_dir else None

    device = dist.init_from_env(select_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    # under amp=auto the preset's student.cpu_bf16 trains in bf16 on a CPU with bf16 instructions
    cfg.amp = training_amp(str(cfg.amp), bool(sc.get("cpu_bf16", False)), device)
    try:
        return _run(run, cfg, sc, kwargs, n_labels, synth, device, rank, world, args)
    finally:
        dist.cleanup()


def _check_synth(synth: Any, source: LabeledSource, data_name: str, cfg: DictConfig) -> None:
    """A synth set this student can train on: the data set's class count, logits for soft KD, samples."""
    sc, names = cfg.student, list(source.class_names)
    if int(synth.num_classes) != source.num_classes:
        raise DataError(f"--synth {cfg.inputs.synth} has {synth.num_classes} classes but data set {data_name} has "
                        f"{source.num_classes}; use the data set the pseudo-labels were made for")
    if list(synth.class_names) != names:
        log.warning("class names differ between the synth run %s and the data (%s); using the data's",
                    list(synth.class_names), names)
    if str(sc.synth_loss) == "soft" and synth.logits_size is None:
        raise DataError(f"--synth {cfg.inputs.synth} stores no logits, needed by student.synth_loss=soft; "
                        "use student.synth_loss=hard or synthesize with logits")
    if len(synth) < 1:
        raise DataError(f"--synth {cfg.inputs.synth}: no samples left (drop_uncertain={sc.drop_uncertain})")


def _split(run: Run, cfg: DictConfig, bundle: DataBundle, source: LabeledSource, n_labels: int | None,
           synth: Any) -> LabelSplit:
    """The labeled ids, the validation slice and the test split (``labels.json``); the synth set
    checked and its copies of those images dropped."""
    sc = cfg.student
    if synth is not None:
        _check_synth(synth, source, bundle.name, cfg)
    label_seed = int(sc.label_seed) if sc.get("label_seed") is not None else int(cfg.seed)
    # the head that made the pseudo-labels saw its own labeled images: keep them out of validation too
    head_labels = list(((synth.manifest.get("head") or {}).get("label_ids") or [])) if synth is not None else []
    split = split_labels(bundle, source, n_labels, cfg.get("label_ids"), label_seed, int(sc.val_size), head_labels)
    if synth is not None:
        _drop_copies(synth, source, bundle.name, cfg, split.label_ids, split.val_ids, split.test_ids)
        log.info("synth set %s: %d of its %d samples train (the first %d; drop_uncertain %s left out the %d most "
                 "uncertain)", cfg.inputs.synth, len(synth), len(synth.manifest["scores"]), synth.first,
                 sc.drop_uncertain, synth.dropped_uncertain)
    if dist.is_main():
        write_json(run.path / "labels.json", split.record())
    dist.barrier()
    return split


def _run(run: Run, cfg: DictConfig, sc: DictConfig, kwargs: dict[str, Any], n_labels: int | None, synth: Any,
         device: torch.device, rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    seed, size = int(cfg.seed), data_size(cfg.data)
    bundle = build_data(cfg.data)
    source = check_data(bundle, "train-student")
    split = _split(run, cfg, bundle, source, n_labels, synth)
    label_ids, val_ids, test_ids = split.label_ids, split.val_ids, split.test_ids
    torch.manual_seed(seed)
    model, spec = create_student(str(sc.arch), str(sc.encoder), source.num_classes, **kwargs)
    unused = check_input_size(model, spec, size)
    backbone = load_backbone(model, str(cfg.inputs.backbone)) if cfg.inputs.get("backbone") else None
    init = init_from_student(model, str(cfg.inputs.init)) if cfg.inputs.get("init") else None
    model.to(device)

    def task_of(stage_cfg: DictConfig, synth_set: Any) -> StudentTask:
        return StudentTask(model, source, label_ids, synth_set, val_ids, test_ids, size, stage_cfg, seed, device,
                           str(cfg.amp), int(cfg.num_workers), unused)

    if sc.get("unlabeled") == "unimatch":
        from dtlabel.students.unimatch import UniMatchTask, unimatch_pool

        task: StudentTask = UniMatchTask(model, source, label_ids, unimatch_pool(bundle, [*label_ids, *val_ids]), val_ids,
                                         test_ids, size, sc, seed, device, str(cfg.amp), int(cfg.num_workers), unused,
                                         run_dir=run.path)
    else:
        task = task_of(sc, synth)
    two_stage = synth is not None and bool(label_ids) and stage2_epochs(sc) > 0
    log.info("train-student %s/%s (%.2fM parameters) on %s: %d epochs x %d steps, batch %d (%d real + %d synth)%s%s, "
             "%d validation (%s), %d test, %d process(es)", spec.arch, spec.encoder_name,
             sum(p.numel() for p in model.parameters()) / 1e6, task.mode, int(sc.epochs), task.epoch_steps,
             int(sc.batch_size), task.n_real, task.n_syn,
             f", synth loss {sc.synth_loss}" + (f" tau {sc.tau}" if str(sc.synth_loss) == "soft" else "") if synth else "",
             f", then {stage2_epochs(sc)} epochs on the real labels alone (two-stage)" if two_stage else "",
             len(val_ids), split.val_from, len(test_ids), world)
    trained = train_recipe(task, sc, run.path, device, not getattr(args, "quiet", False),
                           stage2=(lambda stage_cfg: task_of(stage_cfg, None)) if two_stage else None,
                           title=f"{spec.arch}/{spec.encoder_name}")
    model.eval()
    test, val = _finish(run, cfg, trained, model, spec, source, split, size, device, backbone=backbone, synth=str(cfg.inputs.synth) if synth is not None else None)
    result = trained.result
    return {
        "student": "student", **spec.to_dict(), "num_classes": source.num_classes, "class_names": list(source.class_names),
        "labels": len(label_ids) or None, "label_ids": label_ids,
        "synth": str(cfg.inputs.synth) if synth is not None else None,
        "synth_loss": str(sc.synth_loss) if synth is not None else None,
        "synth_samples": len(synth) if synth is not None else None, "backbone": backbone, "init": init, "data": bundle.name,
        # steps: every optimisation step of the run (both stages of a two-stage student); stage_steps: each stage's
        "size": list(size), "steps": sum(trained.stage_steps), "stage_steps": trained.stage_steps,
        "epochs": result.steps // trained.task.epoch_steps, "schedule": result.schedule, "world_size": world,
        "test_miou": test["miou"], "val_miou": (val or {}).get("miou"), "stage1": trained.stage1,
        "precision": precision(device, str(cfg.amp)), "validation": {"images": len(val_ids), "from": split.val_from},
    }


def _finish(run: Run, cfg: DictConfig, trained: Trained, model: torch.nn.Module, spec: Any, source: LabeledSource,
            split: LabelSplit, size: tuple[int, int], device: torch.device, backbone: Any,
            synth: str | None) -> tuple[dict, dict | None]:
    """Score the selected weights on the test split; rank 0 writes metrics.json, the pictures and the
    student folder. Returns (test scores, validation scores or None)."""
    sc, names = cfg.student, list(source.class_names)
    main = dist.is_main()
    ev = score_student(model, source, split.test_ids, size, int(sc.eval_batch_size), device,
                       str(cfg.amp), keep=int(sc.overlays) if main else 0, num_workers=int(cfg.num_workers))
    val = trained.result.validation() if split.val_ids else None
    selected = trained.result.selection(trained.task.epoch_steps)
    selected["rule"] = selected["rule"].replace("last step", "last epoch")
    test: dict[str, Any] = ev.cm.summary(names)
    if main:
        n_test = len(split.test_ids)
        test = write_metrics(run.path / "metrics.json", ev.cm, names, "test", n_test, size, n_test=n_test, val=val,
                             selected=selected, labels=len(split.label_ids) or None, synth=trained.mode,
                             student=f"{spec.arch}/{spec.encoder_name}")
        title = f"{spec.arch}/{spec.encoder_name} ({trained.mode})"
        save_eval_pictures(run.path, ev.samples, names, source.ignore_index, test, title)
        save_training_curves(run.path, f"train-student {title}")
        save_student(run.path / "student", model, spec, class_names=names, ignore_index=source.ignore_index,
                     data=split.data, data_size=list(size), label_ids=split.label_ids, val_ids=split.val_ids,
                     seed=int(cfg.seed), synth=synth, backbone=backbone, test_miou=test["miou"], selected=selected)
        if trained.stage1:  # the student is saved: stage 1's checkpoint is no longer needed to resume
            shutil.rmtree(run.path / STAGE1 / "checkpoints", ignore_errors=True)
    dist.barrier()
    log.info("test: mIoU %s, pixel accuracy %s (%d images)", test["miou"], test["pixel_accuracy"], len(split.test_ids))
    return test, val
