"""Typed configs (dtlabel.schema) and the optimiser's parameter groups (dtlabel.engine.optim).

The schemas and the YAML presets must agree key for key; wrong types, ranges and choices are one
line naming the key; renamed keys point to their new name; a section builds into its dataclass;
norm and bias parameters take no weight decay and the encoder group trains at its own lr."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dtlabel.cli import main
from dtlabel.config import compose
from dtlabel.engine import LoopConfig, Task, train
from dtlabel.errors import ConfigError, RunError
from dtlabel.schema import COMMANDS, RENAMED, Optim, PretrainSection, section

SECTIONS = {"fit_teacher": "fit", "train_head": "head", "train_student": "student", "pretrain": "pretrain",
            "synthesize": "synth", "demo": "demo"}


@pytest.mark.parametrize("preset", ["tiny", "cpu", "gpu"])
@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_every_preset_sets_exactly_the_schema_keys(command: str, preset: str) -> None:
    cfg = compose(command, [f"preset={preset}"])
    name = SECTIONS[command]
    schema = dataclasses.fields(COMMANDS[command])
    sec_type = {f.name: f for f in schema}[name].default_factory  # type: ignore[misc]

    def keys(node: DictConfig, tp: type, prefix: str) -> None:
        declared = {f.name: f for f in dataclasses.fields(tp)}
        assert set(node.keys()) == set(declared), (prefix, set(node.keys()) ^ set(declared))
        for key, f in declared.items():
            if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
                keys(node[key], f.default_factory, f"{prefix}{key}.")  # type: ignore[arg-type]

    keys(cfg[name], sec_type, f"{name}.")


@pytest.mark.parametrize("override, message", [
    ("head.epochs=0", "head.epochs=0 must be >= 1"),
    ("head.select=top", "head.select=top: expected one of best, last (default best)"),
    ("head.optim.lr=abc", "head.optim.lr=abc: expected a number or null"),
    ("head.optim.betas=[0.9]", "head.optim.betas=[0.9]: expected [a,b], 2 numbers (default [0.9, 0.999])"),
    ("head.optim.encoder_lr_mult=0", "head.optim.encoder_lr_mult=0 must be > 0"),
    ("head.interpreter.dropout=1.5", "head.interpreter.dropout=1.5 must be in [0, 1)"),
    ("head.optim.schedule=cosine", "head.optim.schedule=cosine: expected one of auto, steps, budget"),
    ("head.select=bset", "head.select=bset: expected one of best, last (did you mean: best, last?) (default best)"),
])
def test_schema_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose("train_head", ["preset=tiny", override])
    assert message in str(err.value)


@pytest.mark.parametrize("old", ["student.lr", "fit.keep_checkpoints", "pretrain.base_lr", "head.schedule"])
def test_a_renamed_key_is_one_line_with_its_new_name(old: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    command = {"student": "train-student", "fit": "fit-teacher", "pretrain": "pretrain", "head": "train-head"}
    code = main([command[old.split(".")[0]], "--preset", "tiny", f"{old}=1", "--out", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"'{old}' is now '{RENAMED[old]}'" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_section_builds_into_its_typed_dataclass() -> None:
    cfg = compose("pretrain", ["preset=cpu", "pretrain.optim.lr=1", "pretrain.optim.betas=[0.9,0.95]"])
    optim = section(cfg.pretrain.optim, Optim)
    assert optim.lr == 1.0 and isinstance(optim.lr, float)
    assert optim.betas == (0.9, 0.95) and optim.norm_bias_decay is False
    whole = section(cfg.pretrain, PretrainSection)
    assert whole.steps == 1000 and whole.optim.warmup_steps == 60
    loop = LoopConfig.of(optim, steps=5, seed=3)
    assert (loop.lr, loop.betas, loop.steps, loop.seed) == (1.0, (0.9, 0.95), 5, 3)


class _Frozen(Task):
    """A zero loss: with zero gradients AdamW changes a parameter only through its weight decay."""

    name = "frozen"
    config_prefix = "toy"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"decoder": list(self.model[2].parameters()),
                "encoder": [*self.model[0].parameters(), *self.model[1].parameters()]}

    def batches(self, start_step: int):  # noqa: ANN201
        while True:
            yield torch.ones(2, 3, 8, 8)

    def training_step(self, model: torch.nn.Module, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {"loss": model(batch).sum() * 0.0}


def _shrink(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after / before).mean())


@pytest.mark.parametrize("norm_bias_decay", [False, True])
def test_norm_and_bias_take_no_decay_and_the_encoder_its_own_lr(norm_bias_decay: bool, tmp_path: Path) -> None:
    task = _Frozen()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    lr, wd, steps = 0.1, 0.5, 4
    train(task, LoopConfig(steps=steps, lr=lr, weight_decay=wd, encoder_lr_mult=0.5, norm_bias_decay=norm_bias_decay,
                           min_lr_ratio=1.0), tmp_path / "run", torch.device("cpu"), progress=False)
    after = task.model.state_dict()
    decoder, encoder = (1 - lr * wd) ** steps, (1 - 0.5 * lr * wd) ** steps
    assert _shrink(before["2.weight"], after["2.weight"]) == pytest.approx(decoder, rel=1e-5)
    assert _shrink(before["0.weight"], after["0.weight"]) == pytest.approx(encoder, rel=1e-5)
    for name, rate in (("2.bias", decoder), ("0.bias", encoder), ("1.weight", encoder)):
        expected = rate if norm_bias_decay else 1.0
        assert _shrink(before[name], after[name]) == pytest.approx(expected, rel=1e-5), name


def test_a_resume_keeps_its_parameter_groups(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_Frozen(), LoopConfig(steps=4, lr=0.1, weight_decay=0.1, checkpoint_every=2, max_minutes=0),
          run, torch.device("cpu"), progress=False)  # stopped by its budget after the first step
    with pytest.raises(RunError, match="trained with the parameter groups decoder, decoder.no_decay"):
        train(_Frozen(), LoopConfig(steps=4, lr=0.1, weight_decay=0.1, norm_bias_decay=True), run,
              torch.device("cpu"), progress=False)
    with pytest.raises(ConfigError, match="frozen has no encoder group"):
        task = _Frozen()
        task.parameter_groups = Task.parameter_groups.__get__(task)  # type: ignore[method-assign]
        train(task, LoopConfig(steps=4, lr=0.1, encoder_lr_mult=2.0), tmp_path / "other", torch.device("cpu"),
              progress=False)


def test_a_checkpoint_from_before_the_groups_resumes_as_one_group(tmp_path: Path) -> None:
    """A run started by a version without parameter groups (one AdamW group, decay on every
    parameter, no ``param_groups`` in its state) resumes with that rule: its bias decays from then on."""
    from dtlabel.engine import CheckpointStore

    run, lr, wd = tmp_path / "run", 0.1, 0.5
    task = _Frozen()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    train(task, LoopConfig(steps=4, lr=lr, weight_decay=wd, min_lr_ratio=1.0, max_minutes=0, schedule="steps"),
          run, torch.device("cpu"), progress=False)  # one step, then the budget stops it (checkpointed)
    store = CheckpointStore(run / "checkpoints")
    folder = store.folders()[-1]
    state = torch.load(folder / "state.pt", weights_only=True)
    old = torch.optim.AdamW([p for p in task.model.parameters()], lr=lr, weight_decay=wd)
    old.load_state_dict({"state": {}, "param_groups": old.state_dict()["param_groups"]})
    state["optimizer"] = old.state_dict()
    state["lr_scheduler"]["base_lrs"] = [lr]
    state["lr_scheduler"]["_last_lr"] = [lr]
    del state["param_groups"]
    torch.save(state, folder / "state.pt")
    resumed = _Frozen()
    train(resumed, LoopConfig(steps=4, lr=lr, weight_decay=wd, min_lr_ratio=1.0, schedule="steps"), run,
          torch.device("cpu"), progress=False)
    after = resumed.model.state_dict()
    assert _shrink(before["2.bias"], after["2.bias"]) == pytest.approx((1 - lr * wd) ** 3, rel=1e-5)
    assert _shrink(before["2.weight"], after["2.weight"]) == pytest.approx((1 - lr * wd) ** 4, rel=1e-5)
