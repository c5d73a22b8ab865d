"""dtlabel demo: the tiny chain end to end (teacher -> head -> synthesize --images -> students -> eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.cli import main

    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "-q"]) == 0
    return out


def test_chain_writes_every_stage_and_a_results_table(demo_run: Path) -> None:
    for stage, command in (("teacher", "fit-teacher"), ("head", "train-head"), ("synth", "synthesize"),
                           ("student", "train-student"), ("scratch", "train-student"), ("eval-student", "eval")):
        desc = json.loads((demo_run / stage / "run.json").read_text())
        assert desc["command"] == command, stage
    assert len(list((demo_run / "unlabeled").glob("*.png"))) == 24
    manifest = json.loads((demo_run / "synth" / "manifest.json").read_text())
    assert manifest["count"] == 24  # one pseudo-labeled sample per unlabeled image
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results) == {"head", "student", "scratch"}
    for key, row in results.items():
        assert 0.0 <= row["miou"] <= 100.0 and len(row["per_class_iou"]) == 7, key
        assert row["miou"] == json.loads((demo_run / key / "metrics.json").read_text())["miou"]
    table = (demo_run / "results.md").read_text()
    assert table.count("\n| ") == 4 and "scratch student" in table
    assert (demo_run / "results.png").stat().st_size > 1000
    desc = json.loads((demo_run / "run.json").read_text())
    assert desc["head_miou"] == results["head"]["miou"]


def test_resume_skips_finished_stages(demo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dtlabel.cli import main

    before = {s: (demo_run / s / "run.json").stat().st_mtime_ns for s in ("teacher", "head", "synth", "student")}
    (demo_run / "run.json").unlink()
    assert main(["demo", "--preset", "tiny", "--out", str(demo_run), "--resume"]) == 0
    after = {s: (demo_run / s / "run.json").stat().st_mtime_ns for s in before}
    assert before == after  # nothing retrained
    assert "scratch student" in capsys.readouterr().out


def test_labels_below_one(cli, tmp_path: Path) -> None:
    code, _, err = cli("demo", "--preset", "tiny", "--labels", "0", "--out", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1 and "--labels 0" in err
