"""dtlabel demo (the tiny chain end to end: teacher -> pretrain -> head -> synthesize -> three students
-> eval) and dtlabel report on its run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

STAGES = (("teacher", "fit-teacher"), ("pretrain", "pretrain"), ("head", "train-head"), ("synth", "synthesize"),
          ("student", "train-student"), ("finetune", "train-student"), ("scratch", "train-student"),
          ("eval-head", "eval"), ("eval-student", "eval"), ("eval-finetune", "eval"), ("eval-scratch", "eval"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.cli import main

    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "-q"]) == 0
    return out


def _embedded(page: str) -> dict[str, str]:
    """{data-file: base64 payload} of every embedded picture of a report page."""
    return dict(re.findall(r'data-file="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page))


def test_chain_writes_every_stage_and_a_results_table(demo_run: Path) -> None:
    for stage, command in STAGES:
        desc = json.loads((demo_run / stage / "run.json").read_text())
        assert desc["command"] == command, stage
        assert desc["command_line"].startswith(f"dtlabel {command} "), stage
    student = json.loads((demo_run / "student" / "run.json").read_text())
    assert student["synth"] and student["backbone"]  # pseudo-labels and the pretrained backbone
    assert json.loads((demo_run / "finetune" / "run.json").read_text())["backbone"]
    scratch = json.loads((demo_run / "scratch" / "run.json").read_text())
    assert scratch["backbone"] is None and scratch["synth"] is None
    # the baseline trains as long as each stage of the distilled student
    assert all(steps == scratch["steps"] for steps in student["stage_steps"])
    # synthesize labelled the label-free pool: 24 unlabeled + 24 training images, minus the head's 8 labels
    assert json.loads((demo_run / "synth" / "manifest.json").read_text())["count"] == 24 + 24 - 8
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results) == {"head", "student", "finetune", "scratch"}
    for key, row in results.items():
        assert 0.0 <= row["miou"] <= 100.0 and len(row["per_class_iou"]) == 7, key
        assert row["miou"] == json.loads((demo_run / f"eval-{key}" / "metrics.json").read_text())["miou"]
    table = (demo_run / "results.md").read_text()
    assert table.count("\n| ") == 5 and "scratch student" in table
    assert (demo_run / "results.png").stat().st_size > 1000
    desc = json.loads((demo_run / "run.json").read_text())
    assert desc["head_miou"] == results["head"]["miou"]


def test_report_embeds_every_picture_it_promises(demo_run: Path) -> None:
    from dtlabel.html_report import collect_runs, picture_files

    page = (demo_run / "report.html").read_text()
    pictures = _embedded(page)
    runs = collect_runs([demo_run])
    assert [r.name for r in runs][:2] == ["teacher", "pretrain"] and len(runs) == len(STAGES)
    promised = {p.relative_to(demo_run).as_posix() for p in picture_files(runs)}
    for must in ("teacher/samples.png", "teacher/loss.png", "pretrain/features.png", "synth/preview.png",
                 "student/loss.png", "student/stage1/loss.png", "eval-student/confusion.png"):
        assert must in promised, must
    assert promised | {"results-bars.png", "prediction-grid.png"} == set(pictures)
    for p in promised:  # the bytes of the run's own file, not a copy of something else
        import base64

        assert base64.b64decode(pictures[p]) == (demo_run / p).read_bytes(), p  # the tiny demo fits its teacher
    for command_line in (json.loads((demo_run / s / "run.json").read_text())["command_line"] for s, _ in STAGES):
        assert command_line.split(" --out ")[0].replace("'", "&#x27;") in page
    assert "scratch student (real labels only)" in page and "src=\"http" not in page


def test_report_command_compares_runs(demo_run: Path, tmp_path: Path) -> None:
    from dtlabel.cli import main

    out = tmp_path / "rep"
    assert main(["report", str(demo_run / "scratch"), str(demo_run / "student"), "--out", str(out), "-q",
                 "grid_images=2"]) == 0
    page = (out / "report.html").read_text()
    assert set(_embedded(page)) == {"results-bars.png", "prediction-grid.png", "scratch/loss.png",
                                    "scratch/miou.png", "scratch/overlays.png", "student/loss.png",
                                    "student/miou.png", "student/overlays.png", "student/stage1/loss.png",
                                    "student/stage1/miou.png"}  # the distilled student has two stages
    desc = json.loads((out / "run.json").read_text())
    assert desc["models"] == 2 and desc["pictures"] == 8


def test_resume_skips_finished_stages(demo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dtlabel.cli import main

    before = {s: (demo_run / s / "run.json").stat().st_mtime_ns for s, _ in STAGES}
    (demo_run / "run.json").unlink()
    assert main(["demo", "--preset", "tiny", "--out", str(demo_run), "--resume"]) == 0
    after = {s: (demo_run / s / "run.json").stat().st_mtime_ns for s, _ in STAGES}
    assert before == after  # nothing retrained
    captured = capsys.readouterr()
    assert "scratch student" in captured.out
    assert captured.err.count("skipping finished stage") == len(STAGES)
    assert "[3/11] skipping finished stage train-head" in captured.err


def test_labels_below_one(cli, tmp_path: Path) -> None:
    code, _, err = cli("demo", "--preset", "tiny", "--labels", "0", "--out", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1 and "--labels 0" in err


def test_report_of_an_unfinished_run(cli, tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    code, _, err = cli("report", tmp_path / "half", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "unfinished" in err


def test_report_without_runs(cli, tmp_path: Path) -> None:
    code, _, err = cli("report", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "at least one finished run folder" in err


def test_report_of_a_missing_folder(cli, tmp_path: Path) -> None:
    code, _, err = cli("report", tmp_path / "nope", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "folder not found" in err


def test_report_negative_grid(cli, tmp_path: Path) -> None:
    code, _, err = cli("report", tmp_path, "--out", tmp_path / "r", "grid_images=-1")
    assert code == 2 and err.count("\n") == 1 and "grid_images=-1" in err


def test_demo_without_its_shipped_teacher(cli, tmp_path: Path) -> None:
    code, _, err = cli("demo", "--preset", "tiny", "demo.fit_teacher=false", f"demo.teacher_model={tmp_path / 'none'}",
                       "--out", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1 and "no teacher folder there" in err and "--fit-teacher" in err


def test_demo_without_pretrain_skips_its_stage_and_row(tmp_path: Path) -> None:
    """demo.with_pretrain=false (the cpu preset's choice): no pretrain stage, no fine-tuned row, and
    the distilled student starts from random weights like the scratch baseline."""
    from dtlabel.cli import main

    out = tmp_path / "run"
    assert main(["demo", "--preset", "tiny", "demo.with_pretrain=false", "--out", str(out), "-q"]) == 0
    assert not (out / "pretrain").exists() and not (out / "finetune").exists()
    student = json.loads((out / "student" / "run.json").read_text())
    assert student["synth"] and student["backbone"] is None
    assert set(json.loads((out / "results.json").read_text())) == {"head", "student", "scratch"}
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 4 and "student (pseudo-labels + real labels)" in table
