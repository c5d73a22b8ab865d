"""dtlabel eval: a student and a head on labeled splits, pictures, and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ev") / "student"
    assert main(["train-student", *TINY, "--labels", "8", "--out", str(out)]) == 0
    return out


def test_student_on_test_matches_training_metrics(student: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    assert main(["eval", *TINY, "--student", str(student), "--out", str(out)]) == 0
    for name in ("metrics.json", "overlays.png", "iou.png", "confusion.png", "run.json", "eval.log"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    trained = json.loads((student / "metrics.json").read_text())
    assert m["miou"] == trained["miou"] and m["per_class_iou"] == trained["per_class_iou"]
    assert m["split"] == "test" and m["n_images"] == 200 and m["size"] == [32, 32]
    assert sum(map(sum, m["confusion_matrix"])) == m["pixels"] == 200 * 32 * 32


def test_eval_shows_progress(cli, student: Path, tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli("eval", "--preset", "tiny", "--student", student, "--out", tmp_path / "e")
    assert code == 0 and "eval: 100%" in err and "200/200" in err


def test_student_on_val_split(student: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    assert main(["eval", *TINY, "--student", str(student / "student"), "--split", "val", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 50 and 0 <= m["miou"] <= 100


def test_head(tmp_path: Path) -> None:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher = build_tiny_ddpm(tmp_path / "ddpm", sample_size=32)
    head = tmp_path / "head"
    assert main(["train-head", *TINY, "--labels", "4", "--teacher", str(teacher), "--out", str(head),
                 "head.kind=mlp-ensemble", "data.n_test=20"]) == 0
    out = tmp_path / "e"  # teacher taken from the head's run.json
    assert main(["eval", *TINY, "--head", str(head), "--out", str(out), "data.n_test=20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["miou"] == json.loads((head / "metrics.json").read_text())["miou"]
    assert (out / "confusion.png").is_file() and m["mean_uncertainty"] is not None


def _err(cli, tmp_path: Path, *args: str) -> str:  # noqa: ANN001
    code, _, err = cli("eval", *TINY, "--out", tmp_path / "e", *args)
    assert code == 2 and err.startswith("dtlabel: error: ") and err.count("\n") == 1
    return err


def test_needs_one_model(cli, student: Path, tmp_path: Path) -> None:
    assert "exactly one of --student DIR" in _err(cli, tmp_path)


def test_bad_split(cli, student: Path, tmp_path: Path) -> None:
    assert "--split dev: expected one of train, val, test" in _err(cli, tmp_path, "--student", str(student), "--split", "dev")


def test_empty_split(cli, student: Path, tmp_path: Path) -> None:
    assert "has no 'val' split" in _err(cli, tmp_path, "--student", str(student), "--split", "val", "data.n_val=0")


def test_not_a_student(cli, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    assert "cannot read student.json" in _err(cli, tmp_path, "--student", str(tmp_path / "x"))


def test_class_count_mismatch(cli, student: Path, labeled_folder: Path, tmp_path: Path) -> None:
    err = _err(cli, tmp_path, "--student", str(student), "data=folder", f"data.root={labeled_folder}",
               "data.splits.test=[0011,0012]")
    assert "predicts 7 classes but the data set has 3" in err
