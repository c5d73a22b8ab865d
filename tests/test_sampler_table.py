"""benchmarks/sampler_table.py, the sampler-by-label-quality table: its stages and figures on a tiny run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # eight dtlabel processes (synthesize on two ranks): about a minute on 2 free cores, three on busy ones
def test_the_sampler_table_scores_a_student_per_setting_and_chooses_the_fastest_near_the_best(tmp_path: Path) -> None:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher = build_tiny_ddpm(tmp_path / "ddpm", sample_size=16)
    out = tmp_path / "table"
    args = [sys.executable, "benchmarks/sampler_table.py", "--teacher", str(teacher), "--out", str(out), "--n", "4",
            "--grid", "ddim:2", "dpm:2", "--preset", "tiny", "--within", "100", "--synth-nproc", "2",
            "synth.samples_per_shard=2"]
    empty = subprocess.run([*args, "--report-only"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert empty.returncode == 0 and "chosen: - (not every row is finished)" in empty.stdout
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # nothing ran
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = {(r["sampler"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {("ddim", 2), ("dpm", 2)}
    for (sampler, steps), row in rows.items():
        manifest = json.loads((out / f"synth-{sampler}-{steps}" / "manifest.json").read_text())
        assert manifest["count"] == 4 and manifest["sampler"] == sampler and manifest["sample_steps"] == steps
        assert 0 <= row["miou"] <= 100 and row["per_cpu_s"] > 0 and len(row["each"]) == 1
    assert set(result["references"]) == {"head (reference)", "scratch student (reference)"}
    # every row is within 100 of the best, so the chosen one is the fastest per CPU second
    assert result["chosen"]["per_cpu_s"] == max(r["per_cpu_s"] for r in rows.values())
    assert "(chosen)" in (out / "results.md").read_text() and "teacher.sampler=dpm" in res.stdout
    assert "+ torchrun --standalone --nproc_per_node 2 dtlabel synthesize" in res.stdout
    cpu = json.loads((out / "cpu.json").read_text())
    assert set(cpu) == {"head", "scratch", "synth-ddim-2", "synth-dpm-2", "student-ddim-2-seed0", "student-dpm-2-seed0"}
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)  # finished: nothing reruns
    assert again.returncode == 0 and "+ dtlabel" not in again.stdout
    assert json.loads((out / "cpu.json").read_text()) == cpu
    assert json.loads((out / "samples.json").read_text()) == {"synth-ddim-2": 4, "synth-dpm-2": 4}


@pytest.mark.slow  # a tiny head and a synthesize stage stopped by SIGTERM: about a minute on busy cores
def test_a_sitting_stopped_by_sigterm_is_still_in_the_cpu_ledger_with_the_samples_it_wrote(tmp_path: Path) -> None:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher = build_tiny_ddpm(tmp_path / "ddpm", sample_size=16)
    out = tmp_path / "table"
    args = [sys.executable, "benchmarks/sampler_table.py", "--teacher", str(teacher), "--out", str(out), "--n", "400",
            "--grid", "ddim:20", "--preset", "tiny", "synth.samples_per_shard=4", "synth.batch_size=4"]
    script = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    synth = out / "synth-ddim-20"
    deadline = time.time() + 300
    while not list((synth / "shards").glob("shard-*.tar")) and time.time() < deadline:  # a shard committed
        time.sleep(0.2)
    script.send_signal(signal.SIGTERM)  # to the script alone: it passes the signal on to the stage and waits
    _, err = script.communicate(timeout=120)
    assert script.returncode != 0 and "synth-ddim-20 failed" in err
    assert not (synth / "run.json").exists()
    written = sum(json.loads(p.read_text())["count"] for p in (synth / "shards").glob("shard-*.json"))
    assert 4 <= written < 400 and written % 4 == 0
    assert json.loads((out / "samples.json").read_text()) == {"synth-ddim-20": written}
    assert json.loads((out / "cpu.json").read_text())["synth-ddim-20"] > 0
