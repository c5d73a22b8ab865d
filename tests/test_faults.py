"""Faults: a long command killed with SIGKILL and continued with --resume ends with the bytes of an
uninterrupted run; a full disk is one line, exit 2, nothing that looks finished, and --resume after
freeing space ends with the same bytes. One kill per command here; more kill points under -m slow."""

from __future__ import annotations

import errno
import hashlib
import sys
from pathlib import Path

import pytest
from conftest import kill_after_first_checkpoint_then_resume

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")
DATA = ("data.n_test=4", "data.n_labeled=16", "data.n_unlabeled=8")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    return build_tiny_ddpm(tmp_path_factory.mktemp("teacher") / "ddpm", sample_size=32)


def _commands(teacher: Path) -> dict[str, tuple[list[str], str]]:
    """command -> (argv without --out, the artifact whose bytes must match)."""
    return {
        "fit-teacher": (["fit-teacher", *TINY, *DATA, "fit.steps=30", "fit.checkpoint_every=3", "fit.sample_n=2",
                         "fit.sample_steps=2", "data.size=[16,16]"], "teacher/unet/diffusion_pytorch_model.safetensors"),
        "train-head": (["train-head", *TINY, *DATA, "--labels", "8", "--teacher", str(teacher), "head.epochs=40",
                        "head.batch_size=2", "head.eval_every=10", "head.interpreter.width=8", "head.overlays=0",
                        "head.val_size=4"], "head/head.safetensors"),
        "train-student": (["train-student", *TINY, *DATA, "--labels", "8", "student.epochs=15", "student.epoch_steps=2",
                           "student.val_size=4", "student.overlays=0"], "student/student.safetensors"),
        "pretrain": (["pretrain", *TINY, *DATA, "--teacher", str(teacher), "pretrain.steps=12",
                      "pretrain.checkpoint_every=2", "pretrain.pictures=0"], "backbone/backbone.safetensors"),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(teacher: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """``uninterrupted(name)``: sha256 of the command's artifact after one uninterrupted run (once each)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    done: dict[str, str] = {}

    def sha(name: str) -> str:
        if name not in done:
            argv, artifact = _commands(teacher)[name]
            assert main([*argv, "--out", str(root / name)]) == 0
            done[name] = _sha(root / name / artifact)
        return done[name]

    sha.root = root  # type: ignore[attr-defined]  # the finished runs: root / name
    return sha


@pytest.mark.parametrize("name", ["fit-teacher", "train-student", "pretrain"])  # head, synthesize: their own files
def test_sigkill_then_resume_gives_the_uninterrupted_bytes(name: str, teacher: Path, uninterrupted,
                                                           tmp_path: Path) -> None:
    argv, artifact = _commands(teacher)[name]
    out = tmp_path / "killed"
    kill_after_first_checkpoint_then_resume([sys.executable, "-m", "dtlabel.cli", *argv, "--out", str(out)], out)
    assert _sha(out / artifact) == uninterrupted(name)
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("settle", [0.0, 0.7, 1.5])
@pytest.mark.parametrize("name", ["fit-teacher", "train-head", "train-student", "pretrain"])
def test_sigkill_at_several_points(name: str, settle: float, teacher: Path, uninterrupted,
                                   tmp_path: Path) -> None:
    argv, artifact = _commands(teacher)[name]
    out = tmp_path / "killed"
    kill_after_first_checkpoint_then_resume([sys.executable, "-m", "dtlabel.cli", *argv, "--out", str(out)], out,
                                            settle=settle)
    assert _sha(out / artifact) == uninterrupted(name)


class _DiskFull:
    """Wraps a writer so that its ``fail_at``-th call raises ENOSPC, as a full disk would."""

    def __init__(self, real, fail_at: int) -> None:  # noqa: ANN001
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self.calls += 1
        if self.calls == self.fail_at:
            target = next((a for a in args if isinstance(a, (str, Path))), None)
            raise OSError(errno.ENOSPC, "No space left on device", None if target is None else str(target))
        return self.real(*args, **kwargs)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dtlabel: error: no space left on the device"), err
    assert "--resume" in err[0]
    return err[0]


@pytest.mark.parametrize("where, fail_at", [("checkpoint", 2), ("export", 1)])
def test_full_disk_while_training_is_one_line_and_resumes_to_the_same_bytes(
        where: str, fail_at: int, teacher: Path, uninterrupted, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import dtlabel.engine.checkpoint as checkpoint
    import dtlabel.saving as saving

    argv, artifact = _commands(teacher)["train-student"]
    module = checkpoint if where == "checkpoint" else saving
    monkeypatch.setattr(module, "save_tensors", _DiskFull(module.save_tensors, fail_at))
    out = tmp_path / "full"
    assert main([*argv, "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert not (out / "run.json").exists() and not (out / "student").exists() and not list(out.rglob(".*.tmp"))
    monkeypatch.undo()  # space freed
    assert main([*argv, "--resume", "--out", str(out)]) == 0
    assert _sha(out / artifact) == uninterrupted("train-student")


def test_full_disk_while_writing_a_shard(teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import dtlabel.synth.writer as writer

    assert main(["train-head", *TINY, *DATA, "--labels", "8", "--teacher", str(teacher), "head.overlays=0",
                 "--out", str(tmp_path / "head")]) == 0
    argv = ["synthesize", *TINY, "--n", "12", "--teacher", str(teacher), "--head", str(tmp_path / "head")]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(writer, "add_entries", _DiskFull(writer.add_entries, 9))  # inside the second shard
    out = tmp_path / "full"
    assert main([*argv, "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert not (out / "manifest.json").exists() and not (out / "run.json").exists()
    assert not list(out.rglob(".*.tmp"))  # the unfinished shard gave its space back
    monkeypatch.undo()
    assert main([*argv, "--resume", "--out", str(out)]) == 0
    shards = sorted(p.name for p in (tmp_path / "clean" / "shards").glob("*.tar"))
    assert shards and all(_sha(out / "shards" / s) == _sha(tmp_path / "clean" / "shards" / s) for s in shards)


def _sigterm_then_resume(cmd: list[str], out: Path, ready) -> str:  # noqa: ANN001
    """Start ``cmd``, send SIGTERM once ``ready()`` holds, check the clean stop (exit 143, one line
    naming SIGTERM and --resume, nothing finished), then --resume; returns the stop line."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0], lines
    assert not (out / "run.json").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("name", ["fit-teacher", "train-head", "train-student", "pretrain"])
def test_sigterm_checkpoints_at_the_next_step_and_resumes_to_the_same_bytes(name: str, teacher: Path, uninterrupted,
                                                                             tmp_path: Path) -> None:
    argv, artifact = _commands(teacher)[name]
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "dtlabel.cli", *argv, "--out", str(out)]
    line = _sigterm_then_resume(cmd, out, lambda: bool(list((out / "checkpoints").glob("step_*"))))
    assert "(checkpointed)" in line
    assert _sha(out / artifact) == uninterrupted(name)


def test_sigterm_stops_synthesize_between_batches_and_resumes_to_the_same_shards(teacher: Path, uninterrupted,
                                                                                 tmp_path: Path) -> None:
    import json

    uninterrupted("train-head")  # its run folder is the head that labels
    head = uninterrupted.root / "train-head"
    args = ["synthesize", *TINY, "--n", "24", "--teacher", str(teacher), "--head", str(head),
            "synth.samples_per_shard=3", "synth.batch_size=1"]
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "dtlabel.cli", *args, "--out", str(out)]
    _sigterm_then_resume(cmd, out, lambda: len(list((out / "shards").glob("*.tar"))) >= 2)
    shas = [[s["sha256"] for s in json.loads((r / "manifest.json").read_text())["shards"]] for r in (whole, out)]
    assert shas[0] == shas[1] and not list(out.rglob(".*.tmp"))
