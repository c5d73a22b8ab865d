"""benchmarks/synth_scale.py, the 100k synthesize measurement: its figures on a tiny run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _teacher_and_head(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny DDPM teacher and an untrained head on it (a finished train-head folder)."""
    import torch

    from dtlabel.heads import create_head
    from dtlabel.teachers import load_teacher
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher_dir = build_tiny_ddpm(tmp_path / "ddpm", sample_size=16)
    teacher = load_teacher(teacher_dir, timesteps=(50,))
    torch.manual_seed(0)
    head = create_head("interpreter", teacher.feature_spec, 3, width=8, norm_groups=4)
    head.save(tmp_path / "head" / "head", teacher_hash=teacher.teacher_hash(), class_names=["bg", "a", "b"],
              teacher=teacher.describe())
    (tmp_path / "head" / "run.json").write_text(json.dumps({"command": "train-head"}))
    return teacher_dir, tmp_path / "head"


def test_the_scale_benchmark_records_rate_disk_and_peak_memory_at_each_mark(tmp_path: Path) -> None:
    teacher_dir, head = _teacher_and_head(tmp_path)
    out = tmp_path / "synth"
    args = [sys.executable, "benchmarks/synth_scale.py", "--teacher", str(teacher_dir), "--head", str(head),
            "--n", "12", "--out", str(out), "--marks", "4", "12", "--every", "0.2", "--preset", "tiny",
            "--project-to", "1200", "synth.samples_per_shard=4"]
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    scale = json.loads((out / "scale.json").read_text())
    assert scale["samples"] == 12 and scale["samples_this_sitting"] == 12 and not scale["resumed"]
    assert scale["samples_per_s"] > 0 and scale["samples_per_cpu_s"] > 0 and scale["bytes_per_sample"] > 100
    assert scale["disk_bytes"] == sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))
    assert all(scale["marks"][m]["peak_mib"] > 10 for m in ("4", "12"))
    assert "| 12 |" in res.stdout and "synth_scale.py" in res.stdout
    projected = scale["projected"]  # 100 times the run at its measured rates and size
    assert projected["to"] == 1200 and projected["disk_gib"] == round(1200 * scale["bytes_per_sample"] / 2**30, 2)
    assert projected["cpu_h"] == round(1200 / scale["samples_per_cpu_s"] / 3600, 2)
    assert (out / "scale.png").stat().st_size > 1000 and "projected to 1,200" in res.stdout
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)  # a finished run: resumed, nothing new
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((out / "scale.json").read_text())
    assert resumed["resumed"] is True and len(resumed["sittings"]) == 2 and resumed["samples_timed"] == 12
    assert resumed["marks"] == scale["marks"]  # the first sitting passed them
    assert resumed["cpu_s"] > scale["cpu_s"] and resumed["wall_s"] > scale["wall_s"]


@pytest.mark.slow  # two tiny synthesize runs, one under torchrun: about a minute on busy cores
def test_the_scale_benchmark_runs_ranks_under_torchrun_and_sums_their_memory(tmp_path: Path) -> None:
    teacher_dir, head = _teacher_and_head(tmp_path)
    peaks = {}
    for nproc in (1, 2):  # options of synthesize in any order among the benchmark's own
        out = tmp_path / f"synth-{nproc}"
        args = [sys.executable, "benchmarks/synth_scale.py", "--teacher", str(teacher_dir), "--preset", "tiny",
                "--head", str(head), "--n", "12", "--device", "cpu", "--out", str(out), "--nproc", str(nproc),
                "--marks", "12", "--every", "0.2", "synth.samples_per_shard=4"]
        res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        scale = json.loads((out / "scale.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        assert scale["samples"] == manifest["count"] == 12 and manifest["world_size"] == nproc
        peaks[nproc] = scale["peak_rss_mib"]
    assert peaks[2] > 1.5 * peaks[1]  # the launcher and both ranks are watched, not the launcher alone


@pytest.mark.slow  # a tiny synthesize stopped and resumed: about a minute on busy cores
def test_a_sitting_stopped_by_sigterm_is_recorded_and_the_next_one_adds_to_it(tmp_path: Path) -> None:
    teacher_dir, head = _teacher_and_head(tmp_path)
    out = tmp_path / "synth"
    args = [sys.executable, "benchmarks/synth_scale.py", "--teacher", str(teacher_dir), "--head", str(head), "--n", "400",
            "--out", str(out), "--marks", "4", "400", "--every", "0.2", "--preset", "tiny", "synth.samples_per_shard=4",
            "synth.batch_size=4", "teacher.sample_steps=20"]
    script = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "shards").glob("shard-*.tar")) and time.time() < deadline:
        time.sleep(0.2)
    script.send_signal(signal.SIGTERM)  # to the script alone: it passes the signal on and records the sitting
    assert script.wait(timeout=120) != 0
    first = json.loads((out / "scale.json").read_text())
    assert 4 <= first["samples"] < 400 and first["samples_timed"] == first["samples"] and first["cpu_s"] > 0
    assert first["marks"]["4"] is not None and first["marks"]["400"] is None
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    both = json.loads((out / "scale.json").read_text())
    assert both["resumed"] and len(both["sittings"]) == 2 and both["samples"] == both["samples_timed"] == 400
    assert both["marks"]["4"] == first["marks"]["4"] and both["marks"]["400"]["samples"] == 400
    assert both["cpu_s"] > first["cpu_s"] and "(2 sitting(s))" in res.stdout


def test_the_curves_of_a_run_in_two_sittings_project_its_cost_and_memory(tmp_path: Path) -> None:
    """A hand-made scale.json: 1 sample/s in both sittings, memory growing 2 MiB per 1k samples, 1 kB a sample."""
    def looks(start: int, end: int) -> list[dict[str, float]]:
        return [{"s": float(k - start), "samples": k, "rss_mib": 500 + k / 500, "peak_mib": 600.0, "disk_mib": k / 1024}
                for k in range(start, end + 1, 100)]

    out = tmp_path / "run"
    out.mkdir()
    sittings = [{"wall_s": 3000.0, "looks": looks(0, 3000)}, {"wall_s": 7000.0, "looks": looks(3000, 10000)}]
    (out / "scale.json").write_text(json.dumps({"sittings": sittings, "samples_per_s": 1.0, "samples_per_cpu_s": 0.5,
                                                "bytes_per_sample": 1024}))
    res = subprocess.run([sys.executable, "benchmarks/scale_curves.py", str(out), "--to", "100000"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    projected = json.loads((out / "scale.json").read_text())["projected"]
    assert projected["wall_h"] == round(100000 / 3600, 2) and projected["cpu_h"] == round(200000 / 3600, 2)
    assert projected["disk_gib"] == round(100000 * 1024 / 2**30, 2)
    assert projected["rss_mib_per_10k"] == 20.0 and projected["rss_mib_at_to"] == 700.0
    assert projected["rate_spread"] == 1.0 and len(projected["window_rates"]) == 10
    assert (out / "scale.png").stat().st_size > 1000 and "20.0 MiB per 10k samples" in res.stdout


def test_the_curves_of_a_folder_without_a_scale_run_are_refused_in_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "benchmarks/scale_curves.py", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "scale.json not found" in res.stderr
