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
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dtlabel import dist
from dtlabel.data import build_data, data_size
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.check import check_before_training
from dtlabel.data.splits import labeled_ids, validation_ids
from dtlabel.device import precision, select_device, training_amp
from dtlabel.engine import train
from dtlabel.errors import ConfigError, DataError
from dtlabel.io import write_json
from dtlabel.metrics import write_metrics
from dtlabel.report import save_eval_pictures, save_training_curves
from dtlabel.runs import Run, TimeBudgetReached, read_run
from dtlabel.students import backbone_file, create_student, load_backbone, save_student
from dtlabel.students.model import init_from_student
from dtlabel.students.task import (
    StudentTask,
    check_input_size,
    check_student_options,
    score_student,
    smp_kwargs,
)

log = logging.getLogger(__name__)
STAGE1 = "stage1"  # the run folder's subfolder of the mixed stage of a two-stage student


def check_data(bundle: DataBundle, command: str) -> LabeledSource:
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; {command} evaluates on a labeled test split "
                        "(data=default, data=ccp, data=folder data.root=PATH ...)")
    if not bundle.splits.get("test"):
        raise DataError(f"data set {bundle.name} has no test split; set data.splits.test ({command} evaluates on it)")
    return bundle.labeled


def open_synth(path: str, drop_uncertain: float) -> Any:
    """The ``SynthSet`` of a finished synthesize run (``RunError`` with the reason otherwise)."""
    read_run(path, "synthesize", "--synth")
    from dtlabel.synth import SynthSet

    return SynthSet(path, drop_uncertain=drop_uncertain)


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
    synth = open_synth(str(synth_dir), float(sc.drop_uncertain)) if synth_dir else None

    device = dist.init_from_env(select_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    # under amp=auto the preset's student.cpu_bf16 trains in bf16 on a CPU with bf16 instructions
    cfg.amp = training_amp(str(cfg.amp), bool(sc.get("cpu_bf16", False)), device)
    try:
        return _run(run, cfg, sc, kwargs, n_labels, synth, device, rank, world, args)
    finally:
        dist.cleanup()


def _run(run: Run, cfg: DictConfig, sc: DictConfig, kwargs: dict[str, Any], n_labels: int | None, synth: Any,
         device: torch.device, rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    seed = int(cfg.seed)
    size = data_size(cfg.data)
    bundle = build_data(cfg.data)
    source = check_data(bundle, "train-student")
    names = list(source.class_names)
    if synth is not None:
        if int(synth.num_classes) != source.num_classes:
            raise DataError(f"--synth {cfg.inputs.synth} has {synth.num_classes} classes but data set {bundle.name} has "
                            f"{source.num_classes}; use the data set the pseudo-labels were made for")
        if list(synth.class_names) != names:
            log.warning("class names differ between the synth run %s and the data (%s); using the data's",
                        list(synth.class_names), names)
        if str(sc.synth_loss) == "soft" and synth.logits_size is None:
            raise DataError(f"--synth {cfg.inputs.synth} stores no logits, needed by student.synth_loss=soft; "
                            "use student.synth_loss=hard or synthesize with logits")
        if len(synth) < 1:
            raise DataError(f"--synth {cfg.inputs.synth}: no samples left (drop_uncertain={sc.drop_uncertain})")
    label_seed = int(sc.label_seed) if sc.get("label_seed") is not None else seed
    label_ids: list[str] = []
    if n_labels is not None or cfg.get("label_ids") is not None:
        if not bundle.splits.get("train"):
            raise DataError(f"data set {bundle.name} has no training images for --labels; set data.splits.train")
        label_ids = labeled_ids(source, bundle.splits["train"], n_labels, label_seed, cfg.get("label_ids"))
        n_labels = len(label_ids)
    # the head that made the pseudo-labels saw its own labeled images: keep them out of validation too
    head_labels = list(((synth.manifest.get("head") or {}).get("label_ids") or [])) if synth is not None else []
    val_ids, val_origin = validation_ids(bundle.splits, [*label_ids, *head_labels], int(sc.val_size), label_seed)
    test_ids = list(bundle.splits["test"])
    check_before_training(source, {"labeled": label_ids, "validation": val_ids, "test": test_ids})
    if synth is not None:
        _drop_copies(synth, source, bundle.name, cfg, label_ids, val_ids, test_ids)
        log.info("synth set %s: %d of its %d samples train (drop_uncertain %s left out the %d most uncertain)",
                 cfg.inputs.synth, len(synth), len(synth.manifest["scores"]), sc.drop_uncertain,
                 synth.dropped_uncertain)
    if rank == 0:
        write_json(run.path / "labels.json", {
            "n": n_labels, "label_seed": label_seed, "ids": label_ids, "pool": "train",
            "pool_size": len(bundle.splits.get("train") or []), "val_ids": val_ids, "val_from": val_origin,
            "test_size": len(test_ids), "data": bundle.name,
        })
    dist.barrier()

    torch.manual_seed(seed)
    model, spec = create_student(str(sc.arch), str(sc.encoder), source.num_classes, **kwargs)
    unused = check_input_size(model, spec, size)
    backbone = load_backbone(model, str(cfg.inputs.backbone)) if cfg.inputs.get("backbone") else None
    init = init_from_student(model, str(cfg.inputs.init)) if cfg.inputs.get("init") else None
    model.to(device)
    if sc.get("unlabeled") == "unimatch":
        from dtlabel.students.unimatch import UniMatchTask, unimatch_pool

        task: StudentTask = UniMatchTask(model, source, label_ids, unimatch_pool(bundle, [*label_ids, *val_ids]), val_ids,
                                         test_ids, size, sc, seed, device, str(cfg.amp), int(cfg.num_workers), unused,
                                         run_dir=run.path)
    else:
        task = StudentTask(model, source, label_ids, synth, val_ids, test_ids, size, sc, seed, device, str(cfg.amp),
                           int(cfg.num_workers), unused)
    stage2 = sc.get("stage2_epochs", 0)  # absent in configs of runs started before the two-stage default
    stage2_epochs = int(sc.epochs if stage2 is None else stage2)
    two_stage = synth is not None and bool(label_ids) and stage2_epochs > 0
    log.info("train-student %s/%s (%.2fM parameters) on %s: %d epochs x %d steps, batch %d (%d real + %d synth)%s%s, "
             "%d validation (%s), %d test, %d process(es)", spec.arch, spec.encoder_name,
             sum(p.numel() for p in model.parameters()) / 1e6, task.mode, int(sc.epochs), task.epoch_steps,
             int(sc.batch_size), task.n_real, task.n_syn,
             f", synth loss {sc.synth_loss}" + (f" tau {sc.tau}" if str(sc.synth_loss) == "soft" else "") if synth else "",
             f", then {stage2_epochs} epochs on the real labels alone (two-stage)" if two_stage else "",
             len(val_ids), val_origin, len(test_ids), world)
    progress = not getattr(args, "quiet", False)
    budget = sc.get("max_minutes")
    # two-stage recipe: the mixed stage trains in stage1/, then the scratch recipe on the real labels
    # alone continues from its selected weights in the run folder (as `--init stage1-run` would)
    started = time.time()
    result = train(task, task.loop_config(budget), run.path / STAGE1 if two_stage else run.path, device, progress)
    if result.stopped:
        raise TimeBudgetReached("train-student" + (" (stage 1 of 2)" if two_stage else ""), result.steps, result.total)
    stage1 = None
    if two_stage:
        chosen1 = result.selected.get("metrics") or {}
        stage1 = {"folder": STAGE1, "mode": task.mode, "steps": result.steps, "selected_step": result.selected["step"],
                  "val_miou": chosen1.get("val_miou"), "test_miou": chosen1.get("test_miou")}
        log.info("stage 1 (%s) done: validation mIoU %s at step %s; stage 2: the %d real labels alone", task.mode,
                 stage1["val_miou"], stage1["selected_step"], len(label_ids))
        if rank == 0:
            save_training_curves(run.path / STAGE1, f"train-student stage 1 {spec.arch}/{spec.encoder_name} ({task.mode})")
        sc = OmegaConf.merge(sc, {"epochs": stage2_epochs})
        task = StudentTask(model, source, label_ids, None, val_ids, test_ids, size, sc, seed, device, str(cfg.amp),
                           int(cfg.num_workers), unused)
        # max_minutes is this session's wall time: stage 2 gets what stage 1 left of it (at least one step)
        left = None if budget is None else max(float(budget) - (time.time() - started) / 60, 1e-6)
        result = train(task, task.loop_config(left), run.path, device, progress)
        if result.stopped:
            raise TimeBudgetReached("train-student (stage 2 of 2)", result.steps, result.total)
    mode = f"{stage1['mode']}, then real" if stage1 else task.mode
    model.eval()

    ev = score_student(model, source, test_ids, size, int(sc.eval_batch_size), device, str(cfg.amp),
                       keep=int(sc.overlays) if rank == 0 else 0, num_workers=int(cfg.num_workers))
    chosen = result.selected.get("metrics") or {}
    val = ({"miou": chosen.get("val_miou"), "pixel_accuracy": chosen.get("val_pixel_accuracy"),
            "per_class_iou": chosen.get("val_per_class_iou")} if val_ids else None)
    selected = {"rule": result.selected["rule"].replace("last step", "last epoch"), "step": result.selected["step"],
                "epoch": chosen.get("epoch", result.steps // task.epoch_steps)}
    test: dict[str, Any] = ev.cm.summary(names)
    if rank == 0:
        test = write_metrics(run.path / "metrics.json", ev.cm, names, "test", len(test_ids), size, n_test=len(test_ids),
                             val=val, selected=selected, labels=n_labels, synth=mode,
                             student=f"{spec.arch}/{spec.encoder_name}")
        title = f"{spec.arch}/{spec.encoder_name} ({mode})"
        save_eval_pictures(run.path, ev.samples, names, source.ignore_index, test, title)
        save_training_curves(run.path, f"train-student {title}")
        save_student(run.path / "student", model, spec, class_names=names, ignore_index=source.ignore_index,
                     data=bundle.name, data_size=list(size), label_ids=label_ids, val_ids=val_ids, seed=seed,
                     synth=str(cfg.inputs.synth) if synth is not None else None, backbone=backbone,
                     test_miou=test["miou"], selected=selected)
        if stage1:  # the student is saved: stage 1's checkpoint is no longer needed to resume
            shutil.rmtree(run.path / STAGE1 / "checkpoints", ignore_errors=True)
    dist.barrier()
    log.info("test: mIoU %s, pixel accuracy %s (%d images)", test["miou"], test["pixel_accuracy"], len(test_ids))
    return {
        "student": "student", **spec.to_dict(), "num_classes": source.num_classes, "class_names": names,
        "labels": n_labels, "label_ids": label_ids, "synth": str(cfg.inputs.synth) if synth is not None else None,
        "synth_loss": str(sc.synth_loss) if synth is not None else None,
        "synth_samples": len(synth) if synth is not None else None, "backbone": backbone, "init": init, "data": bundle.name,
        # steps: every optimisation step of the run (both stages of a two-stage student); stage_steps: each stage's
        "size": list(size), "steps": result.steps + (stage1["steps"] if stage1 else 0),
        "stage_steps": [stage1["steps"], result.steps] if stage1 else [result.steps],
        "epochs": result.steps // task.epoch_steps, "world_size": world,
        "test_miou": test["miou"], "val_miou": (val or {}).get("miou"), "stage1": stage1,
        "precision": precision(device, str(cfg.amp)), "validation": {"images": len(val_ids), "from": val_origin},
    }
