"""The student recipes over the engine: one stage, or the two-stage default.

With pseudo-labels and real labels, ``train-student`` trains two stages: the mixed stage (both, per
batch) in ``RUN/stage1/``, then ``student.stage2_epochs`` (null: ``epochs``) on the real labels alone
from its selected weights, in the run folder itself: the same student as a one-stage run followed
by ``--init`` from it (noisy-student style: the real labels get the last word, so the pseudo-labels'
errors do not cap the student). ``student.max_minutes`` is one session's wall time over both stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dtlabel import dist
from dtlabel.engine import train
from dtlabel.engine.loop import TrainResult
from dtlabel.report import save_training_curves
from dtlabel.runs import TimeBudgetReached
from dtlabel.students.task import StudentTask

log = logging.getLogger(__name__)
STAGE1 = "stage1"  # the run folder's subfolder of the mixed stage of a two-stage student

__all__ = ["STAGE1", "Trained", "stage2_epochs", "train_recipe"]


@dataclass
class Trained:
    """The outcome of a recipe: the last stage's engine result and task, and (two stages) the mixed
    stage's summary: its folder, mode, steps, selected step and scores."""

    result: TrainResult
    task: StudentTask
    stage1: dict[str, Any] | None = None

    @property
    def mode(self) -> str:
        return f"{self.stage1['mode']}, then real" if self.stage1 else self.task.mode

    @property
    def stage_steps(self) -> list[int]:
        return [self.stage1["steps"], self.result.steps] if self.stage1 else [self.result.steps]


def stage2_epochs(sc: DictConfig) -> int:
    """Epochs of the second stage: ``student.stage2_epochs``, null meaning ``epochs``, 0 none."""
    stage2 = sc.get("stage2_epochs", 0)  # absent in configs of runs started before the two-stage default
    return int(sc.epochs if stage2 is None else stage2)


def train_recipe(task: StudentTask, sc: DictConfig, run_dir: Path, device: torch.device, progress: bool,
                 stage2: Callable[[DictConfig], StudentTask] | None = None, title: str = "") -> Trained:
    """Train ``task`` (one stage), or with ``stage2`` (a factory of the real-labels task from the
    stage's config) the two-stage recipe. Raises ``TimeBudgetReached`` when the budget stops a stage
    (``--resume`` continues it, crossing from stage 1 to stage 2 where it must)."""
    budget = sc.get("max_minutes")
    started = time.time()
    result = train(task, task.loop_config(budget), run_dir / STAGE1 if stage2 else run_dir, device, progress)
    if result.stopped:
        raise TimeBudgetReached("train-student" + (" (stage 1 of 2)" if stage2 else ""), result.steps, result.total)
    if stage2 is None:
        return Trained(result, task)
    chosen = result.selected.get("metrics") or {}
    stage1 = {"folder": STAGE1, "mode": task.mode, "steps": result.steps, "selected_step": result.selected["step"],
              "val_miou": chosen.get("val_miou"), "test_miou": chosen.get("test_miou")}
    log.info("stage 1 (%s) done: validation mIoU %s at step %s; stage 2: the %d real labels alone", task.mode,
             stage1["val_miou"], stage1["selected_step"], task.n_labels)
    if dist.is_main():
        save_training_curves(run_dir / STAGE1, f"train-student stage 1 {title} ({task.mode})")
    # stage 2 follows stage 1's schedule (auto resolved by the user's budget, not by what is left of it)
    task = stage2(OmegaConf.merge(sc, {"epochs": stage2_epochs(sc), "optim": {"schedule": result.schedule}}))
    # max_minutes is this session's wall time: stage 2 gets what stage 1 left of it (at least one step)
    left = None if budget is None else max(float(budget) - (time.time() - started) / 60, 1e-6)
    result = train(task, task.loop_config(left), run_dir, device, progress)
    if result.stopped:
        raise TimeBudgetReached("train-student (stage 2 of 2)", result.steps, result.total)
    return Trained(result, task, stage1)
