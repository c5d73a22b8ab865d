"""Shared fixtures: tiny data sets on disk and a CLI runner. Everything is small, seeded and CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import torch  # noqa: E402

# One thread: several tests compare in-process runs value for value with subprocess runs, which the
# tests start with OMP_NUM_THREADS=1; another thread count can move a float across a rounding step.
torch.set_num_threads(1)


def make_labeled_folder(root: Path, n: int = 12, size: tuple[int, int] = (24, 32), num_classes: int = 3,
                        seed: int = 0, classes_json: bool = True) -> Path:
    """``root/images/NNNN.png`` + ``root/masks/NNNN.png`` with blocky masks; ids 0001..n."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(1, n + 1):
        mask = np.zeros((h, w), np.uint8)
        for c in range(1, num_classes):
            if rng.random() < 0.8 or i == c:  # every class appears
                y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
                mask[y:y + 6, x:x + 6] = c
        img = (rng.random((h, w, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:04d}.png")
    if classes_json:
        (root / "classes.json").write_text(json.dumps({"classes": [f"c{k}" for k in range(num_classes)]}))
    return root


@pytest.fixture
def labeled_folder(tmp_path: Path) -> Path:
    return make_labeled_folder(tmp_path / "data")


@pytest.fixture
def cli(capsys):  # noqa: ANN001, ANN201
    """Run ``dtlabel`` in-process: returns (exit code, stdout, stderr)."""
    from dtlabel.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def kill_after_first_checkpoint_then_resume(cmd: list[str], out: Path, settle: float = 0.0):  # noqa: ANN201
    """Start ``cmd`` (a ``python -m dtlabel.cli ...`` argv writing ``out``), SIGKILL it once its first
    checkpoint exists (after ``settle`` more seconds), check it left no ``run.json``, then run it again
    with ``--resume``; returns that run's CompletedProcess (asserted successful)."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step_*")):
        time.sleep(0.05)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists(), "the run finished before it could be killed"
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def torchrun_two_nodes(argv: list[str], port: int, timeout: int = 300) -> None:
    """Run ``python -m dtlabel.cli *argv`` as two torchrun "nodes" of one process each on localhost
    (``--nnodes 2 --node_rank 0|1``, a static rendezvous at 127.0.0.1:``port``): the multi-machine
    launch, each node started by its own torchrun, tested on one machine."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "dtlabel.cli", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
