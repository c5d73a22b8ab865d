"""benchmarks/synth_scale.py, the 100k synthesize measurement: its figures on a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_scale_benchmark_records_rate_disk_and_peak_memory_at_each_mark(tmp_path: Path) -> None:
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
    out = tmp_path / "synth"
    args = [sys.executable, "benchmarks/synth_scale.py", "--teacher", str(teacher_dir), "--head", str(tmp_path / "head"),
            "--n", "12", "--out", str(out), "--marks", "4", "12", "--every", "0.2", "--preset", "tiny",
            "synth.samples_per_shard=4"]
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    scale = json.loads((out / "scale.json").read_text())
    assert scale["samples"] == 12 and scale["samples_this_sitting"] == 12 and not scale["resumed"]
    assert scale["samples_per_s"] > 0 and scale["samples_per_cpu_s"] > 0 and scale["bytes_per_sample"] > 100
    assert scale["disk_bytes"] == sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))
    assert all(scale["marks"][m]["peak_mib"] > 10 for m in ("4", "12"))
    assert "| 12 |" in res.stdout and "synth_scale.py" in res.stdout
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)  # a finished run: resumed, nothing new
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "scale.json").read_text())["resumed"] is True
