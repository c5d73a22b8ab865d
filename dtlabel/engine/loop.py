"""The one training loop: a :class:`Task` in, trained weights and a :class:`TrainResult` out.

What every training command gets from it: AdamW over the task's parameter groups (no weight decay on
norm and bias parameters, an encoder lr multiplier; :mod:`dtlabel.engine.optim`) with linear warm-up + cosine decay, mixed precision
(CUDA fp16/bf16, CPU bf16 as a switch), gradient accumulation over micro-batches, gradient
clipping, a non-finite loss as one :class:`TrainingDiverged` line, DDP under torchrun, a tqdm bar
with ETA, ``metrics.jsonl`` (training lines every ``log_every`` steps, one line per evaluation),
best-or-last model selection on a validation metric, a time budget (``max_minutes``: checkpoint and
stop, ``--resume`` continues) and atomic step checkpoints from which a resumed run ends with the
same weights as an uninterrupted one.

Determinism: before step ``s`` torch's global generator is seeded with ``seeds.torch_step(seed, s,
rank)``, so dropout and anything else drawing from it depend only on the step; the task's batches
depend only on the step too. Nothing random is carried from one step to the next.
"""

from __future__ import annotations

import contextlib
import signal
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dtlabel import dist, interrupts, seeds
from dtlabel.device import amp_dtype, autocast
from dtlabel.engine import optim
from dtlabel.engine.checkpoint import CheckpointStore
from dtlabel.engine.config import LoopConfig
from dtlabel.engine.schedule import resume_schedule, warmup_cosine
from dtlabel.engine.task import Task
from dtlabel.errors import RunError, TrainingDiverged
from dtlabel.io import write_text

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    steps: int                       # steps done in total (all sessions)
    total: int                       # steps planned
    stopped: bool                    # the time budget stopped the run before ``total``
    loss_ema: float                  # running mean of the loss at the end (nan if never logged)
    images_per_second: float         # this session
    selected: dict[str, Any] = field(default_factory=dict)  # rule, step, and the metrics of that evaluation
    schedule: str = "steps"          # the lr schedule the run followed (steps | budget; auto resolved)

    def validation(self) -> dict[str, Any]:
        """The validation scores of the selected weights: ``miou``, ``pixel_accuracy``,
        ``per_class_iou`` (None each where the task did not evaluate)."""
        m = self.selected.get("metrics") or {}
        return {"miou": m.get("val_miou"), "pixel_accuracy": m.get("val_pixel_accuracy"),
                "per_class_iou": m.get("val_per_class_iou")}

    def selection(self, epoch_steps: int) -> dict[str, Any]:
        """Which weights were kept: the rule, the step and the epoch of that evaluation."""
        m = self.selected.get("metrics") or {}
        return {"rule": self.selected["rule"], "step": self.selected["step"],
                "epoch": m.get("epoch", self.steps // epoch_steps)}


def _truncate_metrics(path: Path, step: int) -> tuple[float, float]:
    """Drop ``metrics.jsonl`` lines past ``step`` (written after the checkpoint we resume from);
    return ``(elapsed_s, loss_ema)`` of the last training line kept (0 and nan for a new run)."""
    if not path.is_file():
        return 0.0, math.nan
    keep, elapsed, ema = [], 0.0, math.nan
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if rec.get("step", step + 1) <= step:
            keep.append(line)
            elapsed = float(rec.get("elapsed_s", elapsed))
            ema = float(rec.get("loss_ema", ema))
    write_text(path, "".join(ln + "\n" for ln in keep))
    return elapsed, ema


class _Selection:
    """Best-or-last model selection; the best weights live on the CPU and in the checkpoints."""

    def __init__(self, rule: str, metric: str) -> None:
        self.rule, self.metric = rule, metric
        self.record: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def update(self, record: dict[str, Any], model: torch.nn.Module) -> None:
        value = record.get(self.metric)
        if self.rule == "last" or (value is None and self.weights is None):
            self.record, self.weights = record, None
            return
        if value is None:
            return  # keep the best model found so far
        best = (self.record or {}).get(self.metric)
        if best is None or float(value) > float(best):
            self.record = record
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    @property
    def best_value(self) -> float | None:
        return None if self.record is None else self.record.get(self.metric)


def train(task: Task, cfg: LoopConfig, run_dir: str | Path, device: torch.device, progress: bool = True) -> TrainResult:
    """Train ``task.model`` for ``cfg.steps`` steps (resuming from ``run_dir/checkpoints`` if any)."""
    run_dir = Path(run_dir)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    world, rank = dist.world_size(), dist.rank()
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    store = CheckpointStore(run_dir / "checkpoints", cfg.keep_last, cfg.keep_every)
    checkpoint = _read_checkpoint(task, store)
    groups = optim.task_groups(task, cfg, None if checkpoint is None else checkpoint[1].get("param_groups", optim.LEGACY),
                               store.folder.parent)
    opt = optim.adamw(groups, cfg.betas)
    total = int(cfg.steps)
    by_steps = warmup_cosine(cfg.warmup_steps, total, cfg.min_lr_ratio)
    clock = {"fraction": 0.0}  # schedule=budget: training time so far / the budget, set before each step

    def lr_factor(step: int) -> float:
        # schedule=budget: the step the cosine is at is the further of the steps done and the time spent
        return by_steps(max(step, int(clock["fraction"] * total)) if cfg.schedule == "budget" else step)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    selection = _Selection(cfg.select, cfg.select_metric)
    start, counters = _resume(task, cfg, checkpoint, store, opt, sched, scaler, selection)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    metrics = run_dir / METRICS
    elapsed_before, loss_ema = _truncate_metrics(metrics, start) if dist.is_main() else (0.0, math.nan)
    # the running mean and the training time of the checkpoint itself (older checkpoints: the last line kept)
    elapsed_before = float(counters.get("elapsed_s", elapsed_before))
    loss_ema = float(counters.get("loss_ema", loss_ema))
    max_seconds = float(cfg.max_minutes) * 60 if cfg.max_minutes is not None else math.inf
    # under schedule=budget the budget is the whole run's, over every sitting (its cosine ends with it), so a
    # resumed run stops where its lr reaches zero; under steps max_minutes is this sitting's slice of time
    spent_before = elapsed_before if cfg.schedule == "budget" else 0.0
    prefix = f"{task.config_prefix}." if task.config_prefix else ""

    last_saved = start  # every rank takes the same decision: no filesystem check before a barrier

    def save(step: int) -> None:
        nonlocal last_saved
        if step == last_saved:
            return  # this step is checkpointed already (a budget stop on a checkpoint step)
        last_saved = step
        if dist.is_main():
            tensors = {task.model_key: model.state_dict(), **task.checkpoint_tensors()}
            if selection.weights is not None:
                tensors["best"] = selection.weights
            store.save(step, tensors, {"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                                       "scaler": scaler.state_dict(), "total": total, "best": selection.record,
                                       "schedule": cfg.schedule, "param_groups": [g["name"] for g in groups],
                                       "task": task.checkpoint_state(),
                                       "engine": {"loss_ema": loss_ema, "elapsed_s": elapsed_before + time.time() - t_start}})
        dist.barrier()

    bar = tqdm(total=total, initial=start, desc=task.name, disable=not (progress and dist.is_main()),
               dynamic_ncols=True, smoothing=0.05)
    t_start, seen, step = time.time(), 0, start
    # resumed with its whole budget spent: no step more (one decision for all ranks, like the stop below)
    stopped = dist.any_true(cfg.schedule == "budget" and spent_before >= max_seconds) and start < total
    if stopped:
        log.warning("%s: its time budget of %s minutes was spent by step %d of %d; raise %smax_minutes to "
                    "train on", task.name, cfg.max_minutes, start, total, prefix)
    done = start
    consistent = True  # weights, optimiser, counters and evaluations all describe step `done`
    net.train()
    # SIGTERM / SIGINT inside: the step in progress ends, is checkpointed, then the command stops
    with interrupts.deferred():
        try:
            batches = task.batches(start)
            for step in range(start, start if stopped else total):
                batch = next(batches)
                consistent = False
                torch.manual_seed(seeds.torch_step(cfg.seed, step, rank))
                opt.zero_grad(set_to_none=True)
                logged = _forward_backward(task, net, batch, step, device, dtype, scaler, world)
                if float(cfg.grad_clip) > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, float(cfg.grad_clip))
                scaler.step(opt)
                scaler.update()
                if cfg.schedule == "budget":  # the slowest clock of all ranks, so every replica takes the same lr
                    clock["fraction"] = dist.all_reduce_max((elapsed_before + time.time() - t_start) / max_seconds)
                sched.step()
                task.after_step(step)
                done = step + 1
                seen += task.images_per_step
                loss = float(dist.all_reduce_mean(torch.tensor(logged["loss"], dtype=torch.float64, device=device)).item())
                if not math.isfinite(loss):  # the mean over processes decides, so all stop with the same one line
                    raise TrainingDiverged(f"{task.name}: the loss became {loss} at step {step}; lower {prefix}lr or set "
                                           f"{prefix}grad_clip")
                a = float(cfg.loss_smoothing)
                loss_ema = loss if math.isnan(loss_ema) else a * loss_ema + (1 - a) * loss
                elapsed = time.time() - t_start
                bar.update(1)
                if max_seconds < math.inf and done > start:  # a budget ends the run: the bar's total is where it will
                    left = max_seconds - spent_before - elapsed  # (the steps the time left allows at this pace): a true ETA
                    bar.total = min(total, done + int(left / (elapsed / (done - start))))
                postfix = {"loss": f"{loss_ema:.4f}"}
                if task.images_per_step:
                    postfix["img_s"] = f"{seen / max(elapsed, 1e-9):.1f}"
                if selection.best_value is not None:
                    postfix["val"] = f"{selection.best_value:.1f}"
                bar.set_postfix(postfix)
                if dist.is_main() and (done % int(cfg.log_every) == 0 or done == total):
                    rec = {"step": done, **task.log_fields(step), "loss": round(loss, 6),
                           **{k: round(v, 6) for k, v in logged.items() if k != "loss"},
                           "loss_ema": round(loss_ema, 6), "lr": sched.get_last_lr()[0]}  # the first group's
                    if task.images_per_step:
                        rec["images_per_s"] = round(seen / max(elapsed, 1e-9), 3)
                    rec["elapsed_s"] = round(elapsed_before + elapsed, 1)
                    _append(metrics, rec)
                if done == total or (cfg.eval_every and done % int(cfg.eval_every) == 0):
                    _evaluate(task, done, net, model, selection, metrics)
                consistent = True
                if done == total or (cfg.checkpoint_every and done % int(cfg.checkpoint_every) == 0):
                    save(done)
                signum = interrupts.pending()
                if dist.any_true(bool(signum)) and done < total:  # SIGTERM / SIGINT: one decision for all ranks
                    save(done)
                    raise interrupts.Interrupted(signum or signal.SIGTERM, f"at step {done} of {total} of {task.name} "
                                                 "(checkpointed)")
                if dist.any_true(spent_before + time.time() - t_start > max_seconds) and done < total:  # one decision
                    log.warning("%s: time budget of %s minutes reached at step %d of %d; checkpointed, %s", task.name,
                                cfg.max_minutes, done, total, f"the lr schedule's end (raise {prefix}max_minutes and "
                                "--resume to train on)" if cfg.schedule == "budget" else "continue with --resume")
                    save(done)
                    stopped = True
                    break
        except KeyboardInterrupt:
            if consistent and done > start:  # never a half-applied step or a skipped evaluation
                save(done)
            raise
        finally:
            bar.close()
    if not stopped and selection.weights is not None:
        model.load_state_dict(selection.weights)
    rule = (("best validation mIoU" if cfg.select_metric == "val_miou" else f"best {cfg.select_metric}")
            if selection.weights is not None else "last step")
    selected = {"rule": rule, "step": (selection.record or {}).get("step", done) if selection.weights is not None
                else done, "metrics": selection.record}
    return TrainResult(done, total, stopped, loss_ema, seen / max(time.time() - t_start, 1e-9), selected,
                       cfg.schedule)


def _read_checkpoint(task: Task, store: CheckpointStore) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(tensors, state)`` of the latest checkpoint, or None for a new run."""
    if store.latest() is None:
        return None
    tensors, state = store.load(device="cpu")
    if task.model_key not in tensors:
        raise RunError(f"{store.folder}: the checkpoint holds no {task.model_key} weights; it was not written by "
                       f"{task.name}")
    return tensors, state


def _resume(task: Task, cfg: LoopConfig, checkpoint: tuple[dict[str, Any], dict[str, Any]] | None,
            store: CheckpointStore, opt: Any, sched: Any, scaler: Any,
            selection: _Selection) -> tuple[int, dict[str, Any]]:
    """Restore the latest checkpoint, if any; returns the step to continue from and the engine's counters."""
    if checkpoint is None:
        return 0, {}
    tensors, state = checkpoint
    task.model.load_state_dict(tensors[task.model_key])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["lr_scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    before = state.get("total")
    if before not in (None, int(cfg.steps)) and not cfg.allow_new_total:
        raise RunError(f"--resume: the checkpoints in {store.folder.parent} were written for {before} steps, the "
                       f"config now gives {cfg.steps}; resume with the same settings")
    resume_schedule(cfg, state.get("schedule"), store.folder.parent, task.config_prefix)
    selection.record = state.get("best")
    selection.weights = tensors.get("best")
    # checkpoints written before the engine (fit-teacher runs) keep the task's state at the top level
    task.load_checkpoint(tensors, state["task"] if "task" in state else state)
    step = int(state["step"])
    log.info("%s: resumed from step %d of %d (%s)", task.name, step, cfg.steps, store.folder)
    return step, dict(state.get("engine") or {})


def _forward_backward(task: Task, net: torch.nn.Module, batch: Any, step: int, device: torch.device,
                      dtype: torch.dtype | None, scaler: Any, world: int) -> dict[str, float]:
    """Forward + backward of one batch in the task's micro-batches; the batch's losses as floats."""
    parts = task.micro_batches(batch, step)
    logged: dict[str, float] = {}
    for k, (part, weight) in enumerate(parts):
        sync = world > 1 and k < len(parts) - 1
        with net.no_sync() if sync else contextlib.nullcontext():  # type: ignore[operator]
            with autocast(device, dtype):
                losses = task.training_step(net, part, step)
            scaler.scale(losses["loss"].float() * float(weight)).backward()
        for name, value in losses.items():
            logged[name] = logged.get(name, 0.0) + float(weight) * float(value.detach())
    return logged


def _evaluate(task: Task, step: int, net: torch.nn.Module, model: torch.nn.Module, selection: _Selection,
              metrics: Path) -> None:
    net.eval()
    try:
        result = task.evaluate(step)
    finally:
        net.train()
    if result is None:
        return
    record = {"step": step, **task.log_fields(step), **result}  # for an evaluation: passes completed
    selection.update(record, model)
    if dist.is_main():
        _append(metrics, record)
    log.info("%s: step %d, %s", task.name, step,
             ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)))


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
