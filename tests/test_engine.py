"""The training engine on a toy task: bit-exact resume after SIGKILL, time budget, divergence, the
checkpoint keep policy, best-or-last selection, micro-batches and CPU bf16 autocast."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dtlabel.engine import CheckpointStore, LoopConfig, train
from dtlabel.errors import TrainingDiverged

# The toy task lives in a file so that a subprocess (killed mid-run) and the test share it.
TOY = textwrap.dedent('''
    import time
    import torch
    from dtlabel import seeds
    from dtlabel.engine import Task

    class Toy(Task):
        """Regress y = x @ w on a fixed random set; a dropout layer draws from torch's global generator."""
        name = "toy"
        config_prefix = "toy"

        def __init__(self, nan_at=None, sleep=0.0, scores=None, micro=1):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(64, 8, generator=g)
            self.y = self.x @ torch.randn(8, 1, generator=g)
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
            self.nan_at, self.sleep, self.scores, self.micro = nan_at, sleep, scores, micro
            self.autocast_seen = []

        def batches(self, start_step):
            step = start_step
            while True:
                g = torch.Generator().manual_seed(seeds.step(1, step))
                idx = torch.randint(0, 64, (8,), generator=g)
                yield self.x[idx], self.y[idx]
                step += 1

        def micro_batches(self, batch, step):
            x, y = batch
            k = len(x) // self.micro
            return [((x[i:i + k], y[i:i + k]), 1 / self.micro) for i in range(0, len(x), k)]

        def training_step(self, model, batch, step):
            self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
            if self.sleep:
                time.sleep(self.sleep)
            x, y = batch
            loss = (model(x).float() - y).pow(2).mean()
            if step == self.nan_at:
                loss = loss * float("nan")
            return {"loss": loss, "mse": loss.detach()}

        def evaluate(self, step):
            if self.scores is None:
                return None
            return {"val_miou": self.scores[step]}
''')


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_task.py").write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_task", folder / "toy_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.FOLDER = folder
    return module


def _cfg(**kw) -> LoopConfig:  # noqa: ANN003
    return LoopConfig(**{"steps": 12, "lr": 1e-2, "warmup_steps": 2, "grad_clip": 1.0, "checkpoint_every": 3,
                         "seed": 1, **kw})


def _weights(task) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(run: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_time_budget_stops_then_resume_is_bit_exact(toy, tmp_path: Path) -> None:  # noqa: ANN001
    full = toy.Toy()
    result = train(full, _cfg(), tmp_path / "full", torch.device("cpu"), progress=False)
    assert result.steps == 12 and not result.stopped and math.isfinite(result.loss_ema)
    first = toy.Toy()
    stopped = train(first, _cfg(max_minutes=0), tmp_path / "split", torch.device("cpu"), progress=False)
    assert stopped.stopped and stopped.steps == 1
    assert CheckpointStore(tmp_path / "split" / "checkpoints").steps() == [1]
    resumed = toy.Toy()
    again = train(resumed, _cfg(), tmp_path / "split", torch.device("cpu"), progress=False)
    assert again.steps == 12 and _equal(_weights(resumed), _weights(full))
    assert _steps(tmp_path / "split") == _steps(tmp_path / "full") == list(range(1, 13))


def test_resume_after_sigkill_is_bit_exact(toy, tmp_path: Path) -> None:  # noqa: ANN001
    full = toy.Toy()
    train(full, _cfg(steps=40, checkpoint_every=2), tmp_path / "full", torch.device("cpu"), progress=False)
    out = tmp_path / "killed"
    script = (f"import sys, torch; sys.path.insert(0, {str(toy.FOLDER)!r}); import toy_task; "
              "from dtlabel.engine import LoopConfig, train; "
              "train(toy_task.Toy(sleep=0.05), LoopConfig(steps=40, lr=1e-2, warmup_steps=2, grad_clip=1.0, "
              f"checkpoint_every=2, seed=1), {str(out)!r}, torch.device('cpu'), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(CheckpointStore(out / "checkpoints").steps()) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = CheckpointStore(out / "checkpoints").latest()
    assert done is not None and done < 40, "the run finished before it could be killed"
    resumed = toy.Toy()
    result = train(resumed, _cfg(steps=40, checkpoint_every=2), out, torch.device("cpu"), progress=False)
    assert result.steps == 40 and _equal(_weights(resumed), _weights(full))
    assert _steps(out) == list(range(1, 41))  # no line lost or repeated across the kill
    assert not list((out / "checkpoints").glob(".*tmp"))


def test_divergence_is_one_error_naming_the_step(toy, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(TrainingDiverged, match=r"toy: the loss became nan at step 3; lower toy.lr"):
        train(toy.Toy(nan_at=3), _cfg(), tmp_path / "nan", torch.device("cpu"), progress=False)


def test_keep_policy(toy, tmp_path: Path) -> None:  # noqa: ANN001
    train(toy.Toy(), _cfg(steps=10, checkpoint_every=2, keep_last=2, keep_every=4), tmp_path, torch.device("cpu"),
          progress=False)
    assert CheckpointStore(tmp_path / "checkpoints").steps() == [4, 8, 10]


def test_best_selection_restores_the_best_evaluation(toy, tmp_path: Path) -> None:  # noqa: ANN001
    scores = {3: 10.0, 6: 30.0, 9: 20.0, 12: 5.0}
    best = toy.Toy(scores=scores)
    result = train(best, _cfg(eval_every=3, select="best", keep_every=3), tmp_path / "best", torch.device("cpu"),
                   progress=False)
    assert result.selected["rule"] == "best validation mIoU" and result.selected["step"] == 6
    at_six, _ = CheckpointStore(tmp_path / "best" / "checkpoints").load(6)
    assert _equal(_weights(best), at_six["model"])  # the weights of step 6, not of step 12
    last = toy.Toy(scores=scores)
    result = train(last, _cfg(eval_every=3, select="last"), tmp_path / "last", torch.device("cpu"), progress=False)
    assert result.selected["rule"] == "last step" and result.selected["step"] == 12
    evals = [json.loads(ln) for ln in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines() if "val_miou" in ln]
    assert [(r["step"], r["val_miou"]) for r in evals] == sorted(scores.items())


def test_micro_batches_weigh_to_the_batch_loss(toy, tmp_path: Path) -> None:  # noqa: ANN001
    lines = {}
    for micro in (1, 4):
        train(toy.Toy(micro=micro), _cfg(steps=1, lr=0.0), tmp_path / str(micro), torch.device("cpu"), progress=False)
        lines[micro] = json.loads((tmp_path / str(micro) / "metrics.jsonl").read_text().splitlines()[0])
    # dropout differs between a batch and its parts, so compare the weighted mean of the parts' losses
    assert lines[4]["loss"] == pytest.approx(lines[4]["mse"]) and lines[4]["loss"] > 0


def test_cpu_bf16_autocast_is_a_switch(toy, tmp_path: Path) -> None:  # noqa: ANN001
    off, bf16 = toy.Toy(), toy.Toy()
    train(off, _cfg(steps=2), tmp_path / "off", torch.device("cpu"), progress=False)
    result = train(bf16, _cfg(steps=2, amp="bf16"), tmp_path / "bf16", torch.device("cpu"), progress=False)
    assert off.autocast_seen == [False, False] and bf16.autocast_seen == [True, True]
    assert math.isfinite(result.loss_ema)


def test_resume_with_other_settings_is_refused(toy, tmp_path: Path) -> None:  # noqa: ANN001
    from dtlabel.errors import RunError

    train(toy.Toy(), _cfg(steps=4, max_minutes=0), tmp_path, torch.device("cpu"), progress=False)
    with pytest.raises(RunError, match="written for 4 steps, the config now gives 8"):
        train(toy.Toy(), _cfg(steps=8), tmp_path, torch.device("cpu"), progress=False)


def test_budget_schedule_anneals_by_the_time_the_budget_ends(toy, tmp_path: Path) -> None:  # noqa: ANN001
    """A 0.5 s budget over a 1000-step plan (50 ms steps): schedule=steps stops with the lr near its
    peak, schedule=budget with it near the end of its cosine; schedule=auto (the default) is budget
    when there is a budget."""
    last = {}
    for schedule in ("steps", "budget", "auto"):
        result = train(toy.Toy(sleep=0.05), _cfg(steps=1000, max_minutes=0.5 / 60, schedule=schedule, min_lr_ratio=0.0),
                       tmp_path / schedule, torch.device("cpu"), progress=False)
        assert result.stopped and result.steps < 100
        assert result.schedule == ("steps" if schedule == "steps" else "budget")
        last[schedule] = json.loads((tmp_path / schedule / "metrics.jsonl").read_text().splitlines()[-1])["lr"]
    assert last["steps"] > 0.9e-2 and last["budget"] < 0.2e-2 and last["auto"] < 0.2e-2


def test_auto_schedule_without_a_budget_follows_the_steps() -> None:
    assert _cfg().schedule == "steps" and _cfg(max_minutes=0).schedule == "steps"
    assert _cfg(max_minutes=5).schedule == "budget"


def test_budget_schedule_needs_a_budget() -> None:
    from dtlabel.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule=budget needs max_minutes"):
        _cfg(schedule="budget")


def test_a_resumed_run_keeps_its_schedule(toy, tmp_path: Path) -> None:  # noqa: ANN001
    """Under schedule=auto a budget given (or dropped) on --resume does not switch the lr schedule
    mid-run: the checkpoint's schedule holds; an explicit other one is refused in one line."""
    from dtlabel.errors import RunError

    # started without a budget (steps), stopped, resumed with one: still steps
    train(toy.Toy(), _cfg(steps=6, max_minutes=0), tmp_path / "steps", torch.device("cpu"), progress=False)
    resumed = train(toy.Toy(), _cfg(steps=6, max_minutes=5), tmp_path / "steps", torch.device("cpu"), progress=False)
    assert resumed.schedule == "steps" and resumed.steps == 6
    # started under a budget (budget), resumed without one or with schedule=steps: refused
    train(toy.Toy(sleep=0.05), _cfg(steps=1000, max_minutes=0.2 / 60), tmp_path / "budget", torch.device("cpu"),
          progress=False)
    with pytest.raises(RunError, match=r"follows \S*schedule=budget"):
        train(toy.Toy(), _cfg(steps=1000), tmp_path / "budget", torch.device("cpu"), progress=False)
    with pytest.raises(RunError, match=r"trained with \S*schedule=budget"):
        train(toy.Toy(), _cfg(steps=1000, max_minutes=5, schedule="steps"), tmp_path / "budget",
              torch.device("cpu"), progress=False)


def test_a_budget_run_resumed_after_its_budget_does_no_more_steps(toy, tmp_path: Path) -> None:  # noqa: ANN001
    """Under schedule=budget the budget is the run's, over every sitting: a resume with the same budget
    trains no step at the zero lr of its ended cosine; a larger budget trains on."""
    cfg = _cfg(steps=1000, max_minutes=0.3 / 60, schedule="budget", min_lr_ratio=0.0)
    first = train(toy.Toy(sleep=0.05), cfg, tmp_path, torch.device("cpu"), progress=False)
    assert first.stopped and 0 < first.steps < 100
    lines = (tmp_path / "metrics.jsonl").read_text()
    again = train(toy.Toy(sleep=0.05), cfg, tmp_path, torch.device("cpu"), progress=False)
    assert again.stopped and again.steps == first.steps
    assert (tmp_path / "metrics.jsonl").read_text() == lines
    assert CheckpointStore(tmp_path / "checkpoints").steps()[-1] == first.steps
    more = train(toy.Toy(sleep=0.05), _cfg(steps=1000, max_minutes=0.6 / 60, schedule="budget", min_lr_ratio=0.0),
                 tmp_path, torch.device("cpu"), progress=False)
    assert more.stopped and more.steps > first.steps
