"""benchmarks/synth_curve.py, the student against the number of pseudo-labels: its refusals, and its
stages and figures on a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _curve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/synth_curve.py", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_a_folder_without_manifest_or_sizes_past_the_run_get_one_line(tmp_path: Path) -> None:
    res = _curve("--synth", tmp_path, "--out", tmp_path / "curve")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a finished synthesize run" in res.stderr
    (tmp_path / "manifest.json").write_text(json.dumps({"scores": [0.1, 0.2, 0.3, 0.4]}))
    res = _curve("--synth", tmp_path, "--out", tmp_path / "curve", "--sizes", "2", "5")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--sizes [5]: the run made 4 samples" in res.stderr
    assert not (tmp_path / "curve").exists()


@pytest.mark.slow  # a tiny head, synthesize and three tiny students: about a minute on busy cores
def test_the_curve_trains_a_student_per_size_on_the_first_samples_and_watches_its_memory(tmp_path: Path) -> None:
    from dtlabel.cli import main
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher = build_tiny_ddpm(tmp_path / "ddpm", sample_size=32)
    assert main(["train-head", "--preset", "tiny", "-q", "--labels", "8", "--teacher", str(teacher),
                 "--out", str(tmp_path / "head")]) == 0
    assert main(["synthesize", "--preset", "tiny", "-q", "--n", "8", "--teacher", str(teacher), "--head",
                 str(tmp_path / "head"), "synth.samples_per_shard=2", "--out", str(tmp_path / "synth")]) == 0
    out = tmp_path / "curve"
    args = ["--synth", tmp_path / "synth", "--out", out, "--sizes", "8", "4", "--preset", "tiny"]
    res = _curve(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["made"] == 8 and [r["n"] for r in result["rows"]] == [4, 8]
    for row in result["rows"]:
        (run,) = row["runs"]
        assert row["complete"] and run["synth_samples"] == row["n"] and 0 <= run["miou"] <= 100
        assert run["tree_peak_mib"] > 0 and run["peak_rss_mib"] > 0
    assert result["scratch"]["synth_samples"] is None and 0 <= result["scratch"]["miou"] <= 100
    assert (out / "curve.png").stat().st_size > 0 and "student.synth_samples=4" in (out / "results.md").read_text()
    again = _curve(*args)  # finished: nothing reruns, the same table
    assert again.returncode == 0 and "+ dtlabel" not in again.stdout
    assert json.loads((out / "results.json").read_text()) == result
