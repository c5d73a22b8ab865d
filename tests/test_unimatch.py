"""train-student student.unlabeled=unimatch (the consistency-regularisation peer) on the default data at
32 px: its losses and pictures, resume after SIGKILL to the same weights, DDP on gloo, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_after_first_checkpoint_then_resume
from safetensors.torch import load_file

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")
UNIMATCH = ("--labels", "8", "student.unlabeled=unimatch", "student.epochs=3", "student.epoch_steps=2")


@pytest.fixture(scope="module")
def unimatch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("um") / "run"
    assert main(["train-student", *TINY, *UNIMATCH, "--out", str(out)]) == 0
    return out


def test_unimatch_trains_on_labels_and_the_pool_with_its_pictures(unimatch: Path) -> None:
    run = json.loads((unimatch / "run.json").read_text())
    assert run["steps"] == 6 and run["synth"] is None and 0 <= run["test_miou"] <= 100
    lines = [json.loads(x) for x in (unimatch / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert len(train) == 6 and all({"real", "s1", "s2", "fp", "confident"} <= set(x) for x in train)
    assert all(0.0 <= x["confident"] <= 1.0 and x["s1"] >= 0 and x["fp"] >= 0 for x in train)
    # the loss is (real + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2
    x = train[-1]
    assert abs(x["loss"] - (x["real"] + 0.25 * x["s1"] + 0.25 * x["s2"] + 0.5 * x["fp"]) / 2) < 1e-4
    from PIL import Image

    pic = Image.open(unimatch / "unimatch_views.png")
    assert pic.size[0] > 300 and pic.size[1] > 200
    assert (unimatch / "student" / "student.safetensors").is_file()
    assert "unimatch" in (unimatch / "train-student.log").read_text()


def test_unimatch_resumes_after_sigkill_to_the_same_weights(unimatch: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dtlabel.cli", "train-student", *TINY, *UNIMATCH, "--out", str(out)]
    kill_after_first_checkpoint_then_resume(cmd, out)
    a = load_file(str(unimatch / "student" / "student.safetensors"))
    b = load_file(str(out / "student" / "student.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_unimatch_ddp_two_processes_gloo(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29553",
           "-m", "dtlabel.cli", "train-student", *TINY, *UNIMATCH, "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 6
    assert (out / "unimatch_views.png").is_file() and (out / "student" / "student.safetensors").is_file()


def test_unimatch_errors_are_one_line(cli, tmp_path: Path) -> None:  # noqa: ANN001
    runs = iter(range(100))

    def err(*args: str) -> str:
        code, _, text = cli("train-student", *TINY, "--out", tmp_path / str(next(runs)), *args)
        assert code == 2 and text.startswith("dtlabel: error: ") and text.count("\n") == 1, text
        return text

    assert "student.unlabeled=fixmatch: expected one of unimatch or null" in err("--labels", "8", "student.unlabeled=fixmatch")
    assert "takes no --synth" in err("--synth", str(tmp_path), "--labels", "8", "student.unlabeled=unimatch")
    assert "trains on --labels N" in err("student.unlabeled=unimatch", "--synth", str(tmp_path))
    assert "threshold=1.5 must be in [0, 1]" in err("--labels", "8", "student.unlabeled=unimatch",
                                                   "student.unimatch.threshold=1.5")
