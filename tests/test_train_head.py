"""train-head end to end on the default data at 32 px with a tiny random DDPM, and its input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint_then_resume

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    return build_tiny_ddpm(tmp_path_factory.mktemp("teacher") / "ddpm", sample_size=32)


@pytest.fixture(scope="module")
def runs(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-head")
    out = {}
    for kind in ("interpreter", "mlp-ensemble"):
        out[kind] = root / kind
        code = main(["train-head", *TINY, "--labels", "8", "--teacher", str(teacher), "--out", str(out[kind]),
                     f"head.kind={kind}"])
        assert code == 0
    return out


@pytest.mark.parametrize("kind", ["interpreter", "mlp-ensemble"])
def test_outputs(runs: dict[str, Path], kind: str) -> None:
    from dtlabel.heads import load_head

    run = runs[kind]
    for name in ("config.yaml", "train-head.log", "run.json", "labels.json", "metrics.json", "metrics.jsonl",
                 "overlays.png", "iou.png", "loss.png", "head/head.json", "head/head.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 100 and 0 <= metrics["pixel_accuracy"] <= 100
    assert list(metrics["per_class_iou"]) == ["background", "disc", "box", "triangle", "star", "ring", "cross"]
    assert metrics["n_test"] == 200 and metrics["val"]["miou"] is not None
    labels = json.loads((run / "labels.json").read_text())
    assert len(labels["ids"]) == 8 and labels["ids"] == sorted(labels["ids"])
    assert not set(labels["ids"]) & set(labels["val_ids"]) and labels["val_from"] == "val split"
    desc = json.loads((run / "run.json").read_text())
    assert desc["command"] == "train-head" and desc["kind"] == kind and desc["label_ids"] == labels["ids"]
    head = load_head(run)
    assert head.kind == kind and head.meta["label_ids"] == labels["ids"]
    assert head.meta["teacher_hash"] == desc["teacher_hash"] and head.meta["class_names"][0] == "background"


def test_same_labels_for_both_heads_and_reload_reproduces_test_metrics(runs: dict[str, Path], teacher: Path) -> None:
    """The label choice is deterministic; a reloaded head gives the recorded test mIoU exactly."""
    from omegaconf import OmegaConf

    from dtlabel.data import build_data
    from dtlabel.heads import load_head
    from dtlabel.heads.reading import TeacherFeatures
    from dtlabel.heads.task import score_head
    from dtlabel.teachers import teacher_from_config

    a, b = (json.loads((runs[k] / "labels.json").read_text())["ids"] for k in ("interpreter", "mlp-ensemble"))
    assert a == b
    run = runs["mlp-ensemble"]
    cfg = OmegaConf.load(run / "config.yaml")
    bundle = build_data(cfg.data)
    feats = TeacherFeatures(teacher_from_config(teacher, cfg.teacher, amp="off"))
    ev = score_head(load_head(run), feats, bundle.labeled, bundle.splits["test"], (32, 32), 16, int(cfg.seed))
    assert ev.cm.summary()["miou"] == json.loads((run / "metrics.json").read_text())["miou"]


def test_cached_features_and_no_val_split(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "cached"
    code = main(["train-head", *TINY, "--labels", "4", "--teacher", str(teacher), "--out", str(out),
                 "head.kind=mlp-ensemble", "head.cache=true", "head.cache_draws=2", "head.epochs=3",
                 "data.n_val=0", "data.n_test=10", "head.val_size=3"])
    assert code == 0
    labels = json.loads((out / "labels.json").read_text())
    assert labels["val_from"] == "train pool minus the labels" and len(labels["val_ids"]) == 3
    assert not set(labels["ids"]) & set(labels["val_ids"])
    # 4 labels x 2 noise draws + 3 validation + 10 test images, each one cache entry
    assert len(list((out / "feature_cache").glob("??/*/meta.json"))) == 4 * 2 + 3 + 10


def _error_in(capsys: pytest.CaptureFixture[str], args: list[str], out: Path) -> str:
    code = main(["train-head", *TINY, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("dtlabel: error: ")
    return err


def test_input_errors(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    t = ["--teacher", str(teacher)]
    runs = iter(range(100))

    def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:  # each attempt in its own --out
        return _error_in(capsys, args, tmp_path / "runs" / str(next(runs)))

    assert "--labels 0: must be between 1 and the training pool size 200" in _error(capsys, ["--labels", "0", *t])
    assert "--labels 201: must be between 1" in _error(capsys, ["--labels", "201", *t])
    assert "needs --labels N" in _error(capsys, t)
    assert "needs --teacher DIR" in _error(capsys, ["--labels", "8"])
    assert "teacher folder not found" in _error(capsys, ["--labels", "8", "--teacher", str(tmp_path / "missing")])
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("hello")
    assert "no diffusers teacher model in" in _error(capsys, ["--labels", "8", "--teacher", str(tmp_path / "not_a_model")])
    assert "unknown head kind 'mlp'" in _error(capsys, ["--labels", "8", *t, "head.kind=mlp"])
    assert "head.select=worst" in _error(capsys, ["--labels", "8", *t, "head.select=worst"])
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    assert "has no labels" in _error(capsys, ["--labels", "8", *t, "data=images", f"data.root={tmp_path / 'photos'}"])


def _head_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "head" / "head.safetensors"))


def test_micro_batches_train_the_same_head_as_whole_batches(teacher: Path, tmp_path: Path) -> None:
    """CE only, no dropout: GroupNorm is per image, so 4 micro-batches of 1 give the batch's loss and
    gradient: the same loss at every step (each step follows an update made with that gradient)."""
    args = ["train-head", *TINY, "--labels", "4", "--teacher", str(teacher), "head.interpreter.dropout=0.0",
            "head.interpreter.dice_weight=0.0", "head.val_size=0", "data.n_test=4", "head.overlays=0", "head.epochs=4",
            "head.scale=null"]  # no zoom-out: every image has the same number of counted pixels
    losses = []
    for micro in ("null", "1"):
        assert main([*args, f"head.micro_batch={micro}", "--out", str(tmp_path / micro)]) == 0
        lines = [json.loads(ln) for ln in (tmp_path / micro / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in lines])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)


HEAD_RUN = ("train-head", *TINY, "--labels", "8", "data.n_test=8", "head.overlays=0", "head.val_size=4")


def test_time_budget_then_resume_matches_uninterrupted(teacher: Path, tmp_path: Path) -> None:
    args = [*HEAD_RUN, "--teacher", str(teacher), "head.epochs=2", "head.batch_size=2"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "split"
    assert main([*args, "head.max_minutes=0", "--out", str(out)]) == 0  # stops after the first step
    assert not (out / "run.json").exists() and (out / "checkpoints").is_dir()
    assert main([*args, "--resume", "--out", str(out)]) == 0
    a, b = _head_weights(tmp_path / "full"), _head_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full, split = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "full", out))
    assert split["miou"] == full["miou"] and split["selected"] == full["selected"]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(ln)["step"] for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_matches_uninterrupted(teacher: Path, tmp_path: Path) -> None:
    args = [*HEAD_RUN, "--teacher", str(teacher), "head.epochs=40", "head.batch_size=2", "head.eval_every=10",
            "head.interpreter.width=8"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    kill_after_first_checkpoint_then_resume([sys.executable, "-m", "dtlabel.cli", *args, "--out", str(out)], out)
    a, b = _head_weights(tmp_path / "full"), _head_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_gloo(teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29551",
           "-m", "dtlabel.cli", *HEAD_RUN, "--teacher", str(teacher), "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    desc = json.loads((out / "run.json").read_text())
    assert desc["world_size"] == 2 and desc["steps"] == 2 * 2  # 8 labels, batch 4: 2 steps per pass, 2 passes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and sum(map(sum, metrics["confusion_matrix"])) == 8 * 32 * 32
