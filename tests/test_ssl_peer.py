"""benchmarks/ssl_peer.py, the SimCLR peer of pretrain: its run folder feeds train-student, it resumes to the
same backbone, and bad input is one line. Skipped where the optional ``ssl`` extra (lightly) is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightly")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ssl_peer.py"
TINY = ["--preset", "tiny", "--steps", "4", "--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "2"]


def ssl_peer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def simclr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ssl") / "simclr"
    proc = ssl_peer("--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def backbone_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "backbone" / "backbone.safetensors"))


def test_the_run_folder_holds_a_timm_backbone_and_its_pictures(simclr: Path) -> None:
    import timm

    desc = json.loads((simclr / "run.json").read_text())
    assert desc["command"] == "ssl-peer" and desc["steps"] == 4 and desc["images_seen"] == 16
    assert desc["method"] == "SimCLR (lightly)" and desc["stopped_early"] is False
    lines = [json.loads(ln) for ln in (simclr / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and all(r["loss"] > 0 for r in lines)  # logged every 10 steps and the last
    for name in ("views.png", "loss.png", "backbone/backbone.json"):
        assert (simclr / name).is_file(), name
    model = timm.create_model("resnet18", features_only=True, pretrained=False)
    model.load_state_dict(backbone_tensors(simclr), strict=True)


def test_train_student_fine_tunes_the_simclr_backbone(simclr: Path, tmp_path: Path) -> None:
    from dtlabel.cli import main

    out = tmp_path / "student"
    assert main(["train-student", "--preset", "tiny", "-q", "--labels", "4", "--backbone", str(simclr),
                 "student.encoder=tu-resnet18", "student.epochs=1", "data.n_test=4", "student.val_size=0",
                 "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["backbone"]["tensors"] > 50


def test_a_stopped_run_resumes_to_the_same_backbone(simclr: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    first = ssl_peer("--max-minutes", "0", "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["stopped_early"] is True
    second = ssl_peer("--resume", "--out", str(out))
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = backbone_tensors(simclr), backbone_tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_of_one_image_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = ssl_peer("--out", str(tmp_path / "bad"), "--batch-size", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch" in lines[0] and "Traceback" not in proc.stderr
