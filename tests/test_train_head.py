"""train-head end to end on the default data at 32 px with a tiny random DDPM, and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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

    from dtlabel.commands.train_head import TeacherFeatures, evaluate
    from dtlabel.data import build_data
    from dtlabel.heads import load_head
    from dtlabel.teachers import teacher_from_config

    a, b = (json.loads((runs[k] / "labels.json").read_text())["ids"] for k in ("interpreter", "mlp-ensemble"))
    assert a == b
    run = runs["mlp-ensemble"]
    cfg = OmegaConf.load(run / "config.yaml")
    bundle = build_data(cfg.data)
    feats = TeacherFeatures(teacher_from_config(teacher, cfg.teacher, amp="off"))
    cm, _, _ = evaluate(load_head(run), feats, bundle.labeled, bundle.splits["test"], (32, 32), 16, int(cfg.seed))
    assert cm.summary()["miou"] == json.loads((run / "metrics.json").read_text())["miou"]


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


def test_micro_batches_accumulate_the_whole_batch_gradient() -> None:
    import torch

    from dtlabel.commands.train_head import _accumulate
    from dtlabel.heads import create_head
    from dtlabel.teachers import FeatureSpec

    spec = FeatureSpec(("a", "b"), (6, 4), (4, 2))
    torch.manual_seed(0)
    head = create_head("interpreter", spec, 3, width=8, dropout=0.0, dice_weight=0.0)  # CE only: exact
    feats = {"a": torch.randn(4, 6, 4, 4), "b": torch.randn(4, 4, 8, 8)}
    masks = torch.randint(0, 3, (4, 16, 16))
    grads = []
    for micro in (4, 1):
        head.zero_grad()
        losses = _accumulate(head, feats, masks, 255, torch.Generator().manual_seed(0), micro, 0)
        grads.append(torch.cat([p.grad.reshape(-1) for p in head.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert set(losses) == {"loss", "ce", "dice"}
