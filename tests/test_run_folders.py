"""Run folders as inputs and artifacts: unfinished runs are refused as inputs, and artifacts get the
modes the umask gives ordinary files and folders (another user or a serving process must read them)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q", "data.size=[16,16]")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    old = os.umask(0o022)
    try:
        root = tmp_path_factory.mktemp("runs")
        teacher, head = root / "fit", root / "head"
        assert main(["fit-teacher", *TINY, "fit.steps=2", "fit.checkpoint_every=2", "fit.sample_n=0",
                     "--out", str(teacher)]) == 0
        assert main(["train-head", *TINY, "--labels", "4", "--teacher", str(teacher), "data.n_test=4",
                     "head.val_size=0", "head.overlays=0", "head.cache=true", "--out", str(head)]) == 0
    finally:
        os.umask(old)
    return teacher, head


def test_artifacts_get_ordinary_modes(runs: tuple[Path, Path]) -> None:
    for root in runs:
        modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
                 if "checkpoints" not in p.parts}
        for name in ("config.yaml", "run.json", "teacher", "teacher/unet", "teacher/dtlabel_teacher.json",
                     "teacher/unet/diffusion_pytorch_model.safetensors", "head", "head/head.json",
                     "head/head.safetensors", "metrics.json", "labels.json", "feature_cache"):
            if name in modes:
                want = 0o755 if (root / name).is_dir() else 0o644
                assert modes[name] == want, f"{root.name}/{name}: {oct(modes[name])}"
        private = {k: oct(v) for k, v in modes.items() if v in (0o600, 0o700)}
        assert not private, private


def test_run_json_says_what_the_run_cost(runs: tuple[Path, Path]) -> None:
    import resource

    ceiling = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # in this process: the tests' peak so far
    for root in runs:
        desc = json.loads((root / "run.json").read_text())
        assert desc["seconds"] > 0 and desc["disk_mb"] > 0
        assert 50 < desc["peak_rss_mib"] <= ceiling + 1  # torch alone is more than 50 MiB


def _one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dtlabel: error: ") and err.count("\n") == 1, err
    return err


def test_unfinished_teacher_run_is_refused(runs: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = tmp_path / "fit"
    shutil.copytree(runs[0], unfinished)
    (unfinished / "run.json").unlink()
    err = _one_line_error(capsys, ["train-head", *TINY, "--labels", "4", "--teacher", str(unfinished),
                                   "--out", str(tmp_path / "h")])
    assert "an unfinished fit-teacher run (no run.json)" in err and "--resume" in err
    # its teacher/ folder, passed on purpose, is a plain diffusers folder and is accepted
    assert main(["train-head", *TINY, "--labels", "4", "--teacher", str(unfinished / "teacher"), "data.n_test=4",
                 "head.val_size=0", "head.overlays=0", "head.epochs=1", "--out", str(tmp_path / "ok")]) == 0


def test_unfinished_head_run_is_refused(runs: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = tmp_path / "head"
    shutil.copytree(runs[1], unfinished)
    (unfinished / "run.json").unlink()
    for cmd in (["synthesize", "--n", "2"], ["pretrain", "pretrain.steps=1"]):
        err = _one_line_error(capsys, [cmd[0], *TINY, *cmd[1:], "--teacher", str(runs[0]), "--head", str(unfinished),
                                       "--out", str(tmp_path / cmd[0])])
        assert "no run.json, the run is unfinished" in err


def test_safetensors_bytes_do_not_depend_on_the_metadata_order(tmp_path: Path) -> None:
    """safetensors writes its metadata from a hash map (key order varies between saves); ours is sorted."""
    import torch
    from safetensors import safe_open

    from dtlabel.io import save_tensors

    tensors = {f"w{i}": torch.full((3,), float(i)) for i in range(5)}
    meta = {k: k.upper() for k in ("format", "kind", "arch", "data", "seed", "steps", "classes", "teacher")}
    blobs = set()
    for k in range(6):
        save_tensors(tensors, tmp_path / f"{k}.safetensors", metadata=meta)
        blobs.add((tmp_path / f"{k}.safetensors").read_bytes())
    assert len(blobs) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("w3"), tensors["w3"])


def test_two_commands_on_one_folder_the_second_is_refused_and_a_killed_one_does_not_block(tmp_path: Path) -> None:
    """The run folder's lock: while one command writes it, a second one with the same --out gets one
    line and exit 2 (and touches nothing); once the first is SIGKILLed, --resume is not blocked."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "dtlabel.cli", "train-student", "--preset", "tiny", "-q", "--labels", "8",
           "student.epochs=400", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "checkpoints").glob("step_*")):
            time.sleep(0.05)
        log_before = (out / "train-student.log").read_text()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "is in use by another dtlabel command" in second.stderr and str(first.pid) in second.stderr
        resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 2 and "in use" in resumed.stderr  # --resume too, while it runs
        assert (out / "train-student.log").read_text().startswith(log_before)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / ".dtlabel.lock").exists()  # stale file, no stale lock
    short = [*cmd[:-3], "student.epochs=400", "student.max_minutes=0", "--out", str(out), "--resume"]
    done = subprocess.run(short, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_finished_student_keeps_no_checkpoint_and_says_its_size(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A finished train-student run drops its checkpoint (its run.json means training ended), says how
    much disk it keeps, and --resume of it has nothing to do (the folder is left as it was)."""
    out = tmp_path / "st"
    args = ["train-student", "--preset", "tiny", "-q", "--labels", "8", "student.epochs=1"]
    assert main([*args, "--out", str(out)]) == 0
    assert not (out / "checkpoints").exists()
    run = json.loads((out / "run.json").read_text())
    weights = (out / "student" / "student.safetensors").stat().st_size
    assert weights / 1e6 <= run["disk_mb"] < 3 * weights / 1e6 + 1  # the hard-linked weights count once
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    assert main([*args, "--resume", "--out", str(out)]) == 0
    assert "finished train-student run: nothing to resume" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_refused_attempt_leaves_no_run_that_blocks_the_next(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A command refused by a check after its folder opened (here: more labels than the data set
    has) leaves its config.yaml and log, no work: the corrected command runs in the
    same folder without --resume, and the log keeps both attempts. A folder with work still refuses."""
    out = tmp_path / "s"
    assert main(["train-student", *TINY, "--labels", "999", "--out", str(out)]) == 2
    assert {p.name for p in out.iterdir()} <= {"config.yaml", "train-student.log", ".dtlabel.lock"}
    capsys.readouterr()
    assert main(["train-student", *TINY, "--labels", "4", "student.epochs=1", "--out", str(out)]) == 0
    assert (out / "run.json").is_file() and "999" in (out / "train-student.log").read_text()
    assert main(["train-student", *TINY, "--labels", "4", "student.epochs=1", "--out", str(out)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
