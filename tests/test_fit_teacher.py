"""fit-teacher: a tiny run, plain-diffusers loading, exact resume, SIGKILL + resume, DDP on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint_then_resume
from safetensors.torch import load_file

ARGS = ("fit-teacher", "--preset", "tiny", "fit.steps=6", "fit.checkpoint_every=2", "fit.sample_n=2",
        "fit.sample_steps=2", "data.size=[16,16]", "-q")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "teacher" / "unet" / "diffusion_pytorch_model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.cli import main

    out = tmp_path_factory.mktemp("fit") / "full"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_outputs_and_plain_diffusers_load(full_run: Path) -> None:
    from diffusers import DDPMPipeline

    desc = json.loads((full_run / "run.json").read_text())
    assert desc["steps"] == 6 and desc["family"] == "ddpm" and desc["size"] == [16, 16]
    assert desc["stopped_early"] is False and desc["final_loss"] > 0
    for name in ("config.yaml", "fit-teacher.log", "metrics.jsonl", "loss.png", "samples.png"):
        assert (full_run / name).is_file(), name
    steps = [json.loads(ln)["step"] for ln in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    pipe = DDPMPipeline.from_pretrained(full_run / "teacher")
    assert pipe.unet.config.sample_size == [16, 16]
    img = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 16, 16, 3)
    # by default only the last checkpoint stays (a user who wants the teacher needs no more)
    ckpts = sorted((full_run / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_0000006"]


def test_resume_after_time_budget_matches_uninterrupted(full_run: Path, tmp_path: Path) -> None:
    from dtlabel.cli import main

    out = tmp_path / "split"
    assert main([*ARGS, "fit.max_minutes=0", "--out", str(out)]) == 0  # stops after the first step
    first = json.loads((out / "run.json").read_text())
    assert first["stopped_early"] is True and first["steps"] == 1
    assert main([*ARGS, "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["steps"] == 6
    assert _same(_weights(out), _weights(full_run))
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]  # no duplicated metric lines
    elapsed = [r["elapsed_s"] for r in recs]
    assert elapsed == sorted(elapsed)  # training time adds up across sessions


def test_sigkill_then_resume_completes(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dtlabel.cli", *ARGS, "fit.steps=150", "fit.checkpoint_every=3", "fit.log_every=1",
           "--out", str(out)]
    # killed after its first checkpoint; the same command with --resume continues from the last complete one
    kill_after_first_checkpoint_then_resume(cmd, out, settle=0.2)
    desc = json.loads((out / "run.json").read_text())
    assert desc["steps"] == 150
    assert not list(out.glob(".*tmp"))  # no half-written checkpoint survives
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 151))  # no metric line lost or repeated across the kill
    elapsed = [r["elapsed_s"] for r in recs]
    assert elapsed == sorted(elapsed)  # training time adds up across sessions


def test_fit_on_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from dtlabel.cli import main

    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(folder / f"{i}.jpg")
    out = tmp_path / "run"
    assert main([*ARGS, "fit.steps=2", "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["num_images"] == 5


def test_missing_images_folder(cli, tmp_path: Path) -> None:
    code, _, err = cli(*ARGS, "--images", tmp_path / "none", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "data.root not found" in err


def _step_losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_min_snr_weighting(tmp_path: Path) -> None:
    """fit.snr_gamma weights the per-sample MSE by min(SNR, gamma) / SNR: a gamma above every SNR
    is plain MSE, to the last byte; a small one scales the first step's loss (identical weights,
    batch, noise and timesteps) down; v-prediction trains with its own weights."""
    from dtlabel.cli import main

    short = [a for a in ARGS if not a.startswith("fit.steps")] + ["fit.steps=2", "fit.log_every=1", "fit.sample_n=0"]
    runs = {}
    for name, extra in (("plain", []), ("huge", ["fit.snr_gamma=1e12"]), ("small", ["fit.snr_gamma=0.01"]),
                        ("v", ["fit.snr_gamma=5", "fit.prediction_type=v_prediction"])):
        runs[name] = tmp_path / name
        assert main([*short, *extra, "--out", str(runs[name])]) == 0
    plain, huge, small = (_step_losses(runs[k]) for k in ("plain", "huge", "small"))
    assert len(plain) == 2 and huge == plain
    assert _same(_weights(runs["plain"]), _weights(runs["huge"]))
    assert 0 < small[0] < 0.9 * plain[0]
    assert all(0 < v < 10 for v in _step_losses(runs["v"]))


def test_bad_snr_gamma(cli, tmp_path: Path) -> None:
    code, _, err = cli(*ARGS, "fit.snr_gamma=0", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "fit.snr_gamma=0" in err and not (tmp_path / "r" / "teacher").exists()


def test_bad_size_for_unet(cli, tmp_path: Path) -> None:
    code, _, err = cli(*ARGS, "fit.size=[18,18]", "--out", tmp_path / "r")
    assert code == 2 and "multiple of 4" in err


def test_scale_trains_at_a_fraction_of_data_size(tmp_path: Path) -> None:
    from diffusers import UNet2DModel

    from dtlabel.cli import main
    from dtlabel.teachers.fit import export_checkpoint

    out = tmp_path / "half"
    assert main([*ARGS, "fit.steps=2", "fit.checkpoint_every=2", "data.size=[32,48]", "fit.scale=0.5",
                 "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["size"] == [16, 32]
    assert list(UNet2DModel.from_pretrained(out / "teacher" / "unet").config.sample_size) == [16, 32]
    exported = export_checkpoint(out, 2, tmp_path / "step2")
    assert json.loads((exported / "dtlabel_teacher.json").read_text())["size"] == [16, 32]


def test_cpu_preset_teacher_size_for_ccp() -> None:
    from dtlabel.config import compose
    from dtlabel.teachers.fit import teacher_size

    cfg = compose("fit_teacher", ["preset=cpu", "data=ccp"])
    assert teacher_size(cfg.fit, cfg.data) == (96, 64)


def test_bad_scale(cli, tmp_path: Path) -> None:
    code, _, err = cli(*ARGS, "fit.scale=0", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "fit.scale=0 must be in (0, 1]" in err


def test_bad_fit_size(cli, tmp_path: Path) -> None:
    code, _, err = cli(*ARGS, "fit.size=[16,16,3]", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "fit.size=[16,16,3]: expected [H,W], two whole numbers" in err
    code, _, err = cli(*ARGS, "fit.size=[4,4]", "--out", tmp_path / "r2")
    assert code == 2 and err.count("\n") == 1 and "fit.size must be [H, W] with both >= 8" in err


def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "dtlabel.cli", *ARGS, "fit.steps=4", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    desc = json.loads((out / "run.json").read_text())
    assert desc["steps"] == 4
    assert (out / "teacher" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_finished_run_reexports_fp16(full_run: Path, tmp_path: Path) -> None:
    import shutil

    from dtlabel.cli import main
    from dtlabel.teachers import load_teacher

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    assert main([*ARGS, "fit.export_dtype=fp16", "--resume", "--out", str(out)]) == 0
    half, full = _weights(out), _weights(full_run)
    assert all(v.dtype == torch.float16 for v in half.values())
    assert all(torch.allclose(half[k].float(), full[k], atol=1e-3, rtol=1e-2) for k in full)
    desc = json.loads((out / "run.json").read_text())
    assert desc["steps"] == 6 and desc["final_loss"] == json.loads((full_run / "run.json").read_text())["final_loss"]
    teacher = load_teacher(out)
    feats = teacher.features(torch.zeros(1, 3, 16, 16))
    assert all(f.dtype == torch.float32 for f in feats.values())


def test_export_checkpoint_matches_final_teacher(full_run: Path, tmp_path: Path) -> None:
    from dtlabel.teachers.fit import checkpoint_steps, export_checkpoint

    assert checkpoint_steps(full_run) == [6]
    out = export_checkpoint(full_run, 6, tmp_path / "t6")
    assert _same(load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")), _weights(full_run))
    assert json.loads((out / "dtlabel_teacher.json").read_text())["trained_steps"] == 6
    raw = export_checkpoint(full_run, 6, tmp_path / "raw6", weights="raw")  # the trained weights, not their EMA
    raw_weights = load_file(str(raw / "unet" / "diffusion_pytorch_model.safetensors"))
    assert _same(raw_weights, load_file(str(full_run / "checkpoints" / "step_0000006" / "unet.safetensors")))
    assert not _same(raw_weights, _weights(full_run))
    assert json.loads((raw / "dtlabel_teacher.json").read_text())["weights"] == "raw"


def test_export_missing_checkpoint(full_run: Path, tmp_path: Path) -> None:
    from dtlabel.errors import ConfigError
    from dtlabel.teachers.fit import export_checkpoint

    with pytest.raises(ConfigError, match=r"no complete checkpoint at step 2 \(have: 6\)"):
        export_checkpoint(full_run, 2, tmp_path / "t2")


def test_keep_every_keeps_checkpoints_for_good(tmp_path: Path) -> None:
    from dtlabel.cli import main
    from dtlabel.teachers.fit import checkpoint_steps

    out = tmp_path / "keep"
    assert main([*ARGS, "fit.keep_last=1", "fit.keep_every=2", "fit.steps=5", "fit.checkpoint_every=1",
                 "--out", str(out)]) == 0
    assert checkpoint_steps(out) == [2, 4, 5]


def test_moved_run_folder_resumes_to_the_same_teacher(full_run: Path, tmp_path: Path) -> None:
    import shutil

    from dtlabel.cli import main

    first = tmp_path / "machine-a" / "run"
    assert main([*ARGS, "fit.max_minutes=0", "--out", str(first)]) == 0
    moved = tmp_path / "machine-b" / "elsewhere"
    shutil.move(str(first.parent), str(moved.parent))
    moved = moved.parent / "run"
    assert main([*ARGS, "--resume", "--out", str(moved)]) == 0
    assert json.loads((moved / "run.json").read_text())["steps"] == 6
    assert _same(_weights(moved), _weights(full_run))


def test_init_from_trains_an_existing_teacher_further(full_run: Path, tmp_path: Path) -> None:
    from dtlabel.cli import main

    # lr 0: the weights stay those of the initial teacher (proves they were loaded, whatever fit.model says)
    frozen = tmp_path / "frozen"
    assert main([*ARGS, "fit.steps=2", "fit.optim.lr=0", f"fit.init_from={full_run}", "fit.model.block_out_channels=[8,8,8]",
                 "--out", str(frozen)]) == 0
    assert _same(_weights(frozen), _weights(full_run))
    meta = json.loads((frozen / "teacher" / "dtlabel_teacher.json").read_text())
    assert meta["trained_steps"] == 8 and meta["init_steps"] == 6 and meta["run_steps"] == 2
    desc = json.loads((frozen / "run.json").read_text())
    assert desc["init_steps"] == 6 and desc["total_steps"] == 8
    # trained further: other weights, and a run stopped, moved away from the initial teacher's folder
    # and resumed ends where an uninterrupted one does
    whole = tmp_path / "whole"
    assert main([*ARGS, "fit.steps=4", f"fit.init_from={full_run / 'teacher'}", "--out", str(whole)]) == 0
    assert not _same(_weights(whole), _weights(full_run))
    part = tmp_path / "part"
    assert main([*ARGS, "fit.steps=4", f"fit.init_from={full_run / 'teacher'}", "fit.max_minutes=0",
                 "--out", str(part)]) == 0
    assert json.loads((part / "run.json").read_text())["steps"] == 1
    moved = tmp_path / "moved"
    part.rename(moved)
    assert main([*ARGS, "fit.steps=4", "fit.init_from=/nonexistent/now", "--resume", "--out", str(moved)]) == 0
    assert _same(_weights(moved), _weights(whole))


def test_init_from_not_a_ddpm(cli, tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    for sub in ("unet", "vae", "text_encoder"):
        (sd / sub).mkdir(parents=True)
    code, _, err = cli(*ARGS, f"fit.init_from={sd}", "--out", tmp_path / "r1")
    assert code == 2 and err.count("\n") == 1 and "only a DDPM teacher" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(*ARGS, f"fit.init_from={empty}", "--out", tmp_path / "r2")
    assert code == 2 and err.count("\n") == 1 and "no UNet2DModel config.json" in err
    code, _, err = cli(*ARGS, f"fit.init_from={tmp_path / 'missing'}", "--out", tmp_path / "r3")
    assert code == 2 and err.count("\n") == 1 and "folder not found" in err


def test_a_teacher_stopped_by_its_budget_is_noted_in_the_log_when_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from dtlabel.cli import main
    from dtlabel.teachers import load_teacher

    out = tmp_path / "early"
    assert main([*ARGS, "fit.max_minutes=0", "--out", str(out)]) == 0
    with caplog.at_level(logging.INFO):
        load_teacher(out)
    noted = [r for r in caplog.records if "stopped early (time budget) at step 1 of 6" in r.getMessage()]
    assert noted and all(r.levelno == logging.INFO for r in noted)  # the log, not a warning on every later command
    # a budget-scheduled run annealed by its budget's end: said so, without asking for --resume
    annealed = tmp_path / "annealed"
    assert main([*ARGS, "fit.max_minutes=0.0001", "fit.optim.schedule=budget", "--out", str(annealed)]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_teacher(annealed)
    said = [r.getMessage() for r in caplog.records if "time budget" in r.getMessage()]
    assert len(said) == 1 and "fit.optim.schedule=budget" in said[0] and "--resume" not in said[0]


def test_teacher_loss_benchmark_scores_teachers_on_fixed_noise(full_run: Path, tmp_path: Path) -> None:
    """benchmarks/teacher_loss.py: the same teacher scores the same to the last digit (fixed images,
    noise and timesteps), a teacher of another size or a folder that is not one is one line, exit 2."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_loss.py"
    base = [sys.executable, str(script), "data.size=[16,16]", "data.n_test=4", "--ids", "test", "--preset", "tiny",
            "--draws", "1", "--timesteps", "10", "500"]
    done = subprocess.run([*base, "--teacher", f"a={full_run / 'teacher'}", "--teacher", f"b={full_run / 'teacher'}",
                           "--out", str(tmp_path / "loss")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "loss" / "teacher_loss.json").read_text())["rows"]
    assert [r["teacher"] for r in rows] == ["a", "b"] and rows[0]["mse"] == rows[1]["mse"]
    assert set(rows[0]["mse"]) == {"10", "500"} and all(0 < v < 10 for v in rows[0]["mse"].values())
    assert "| a |" in (tmp_path / "loss" / "teacher_loss.md").read_text()
    bad = subprocess.run([*base, "--teacher", f"x={tmp_path}", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "NAME=DIR" in bad.stderr


def test_cpu_bf16_switch_follows_the_cpu(tmp_path: Path) -> None:
    """fit.cpu_bf16 under amp=auto trains in bf16 only where the CPU has native bf16; amp=off wins."""
    from dtlabel.cli import main
    from dtlabel.device import cpu_has_bf16

    short = [*ARGS, "fit.steps=2", "fit.sample_n=0", "fit.cpu_bf16=true"]
    assert main([*short, "--out", str(tmp_path / "auto")]) == 0
    assert main([*short, "amp=off", "--out", str(tmp_path / "off")]) == 0
    amp = {k: json.loads((tmp_path / k / "run.json").read_text())["amp"] for k in ("auto", "off")}
    assert amp == {"auto": "bf16" if cpu_has_bf16() else "auto", "off": "off"}
