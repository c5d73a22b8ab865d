"""benchmarks/gpu_check.py, the script a lent GPU runs: its CPU rehearsal and its data pack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_prepare_resizes_photos_and_masks_to_the_data_size(tmp_path: Path) -> None:
    src = tmp_path / "ccp"
    rng = np.random.default_rng(0)
    for sub in ("labeled/images", "labeled/masks_coarse8", "unlabeled/images"):
        (src / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (380, 256, 3), dtype=np.uint8)).save(src / f"labeled/images/000{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (380, 256, 3), dtype=np.uint8)).save(src / f"unlabeled/images/100{i}.jpg")
        mask = np.zeros((380, 256), np.uint8)
        mask[100:300, 50:200] = i + 1
        Image.fromarray(mask).save(src / f"labeled/masks_coarse8/000{i}.png")
    (src / "classes.json").write_text("{}")
    out = tmp_path / "pack"
    subprocess.run([sys.executable, str(SCRIPT), "prepare", "--data-root", str(src), "--out", str(out), "--no-wheels"],
                   check=True, capture_output=True, cwd=ROOT)
    for sub in ("labeled/images", "unlabeled/images"):
        files = sorted((out / "ccp" / sub).iterdir())
        assert len(files) == 3 and all(Image.open(f).size == (128, 192) for f in files)  # [H, W] = [192, 128]
    for i in range(3):
        mask = np.asarray(Image.open(out / f"ccp/labeled/masks_coarse8/000{i}.png"))
        assert mask.shape == (192, 128) and set(np.unique(mask)) == {0, i + 1}  # nearest: no new class ids
    assert (out / "ccp" / "classes.json").is_file()


@pytest.mark.slow
def test_cpu_rehearsal_measures_every_command_and_returns_a_loadable_teacher(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    subprocess.run([sys.executable, str(SCRIPT), "run", "--tiny", "--device", "cpu", "--skip-tests", "--minutes", "8",
                    "--out", str(out), "--work", str(work)], check=True, capture_output=True, cwd=ROOT, timeout=900)
    files = sorted(p.name for p in out.iterdir())
    # what a device call returns: flat, at most 8 files, plain names
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert {"results.json", "results.md", "gpu_check.log", "teacher.tar", "samples.png"} <= set(files)
    results = json.loads((out / "results.json").read_text())
    commands = [r["command"] for r in results["throughput"]]
    assert commands == ["fit-teacher", "pretrain", "train-head", "synthesize (sampled)", "synthesize (pool)", "train-student"]
    for row in results["throughput"]:
        assert row["rc"] == 0 and row["images_per_s"] > 0, row
    # the default teacher: its fit, a head, the sampling switches one by one, the big run
    default = results["default"]
    assert [r["command"].split(":")[-1].strip() for r in default[2:6]] == [
        "CPU noise, 1 encoder", "+ noise on the device", "+ 8 encoding threads (the gpu preset)", "+ channels_last"]
    assert default[-1]["command"].startswith("synthesize --n 100000") and default[-1]["samples"] == 32
    for row in default:
        assert row["rc"] == 0 and row["images_per_s"] > 0, row
    assert [r["model"] for r in results["layouts"]] == ["train-student", "teacher UNet"]
    assert all(r["nchw_s"] > 0 and r["channels_last_s"] > 0 for r in results["layouts"])
    from diffusers import UNet2DModel
    from safetensors import safe_open

    teacher = results["teachers"]["ccp"]
    assert teacher["rc"] == 0 and teacher["run"]["stopped_early"]  # the budget ended it
    assert list(results["teachers"]) == ["ccp"]  # the default teacher only with --default-teacher
    with tarfile.open(out / "teacher.tar") as tar:
        tar.extractall(tmp_path / "ccp", filter="data")
    folder = tmp_path / "ccp" / "teacher"
    assert json.loads((folder / "dtlabel_teacher.json").read_text())["init_from"] == "teacher"  # continued, not anew
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    assert unet.config.sample_size is not None
    weights = next((folder / "unet").glob("*.safetensors"))
    with safe_open(str(weights), "pt") as f:
        assert all(f.get_tensor(k).dtype.is_floating_point and f.get_tensor(k).element_size() == 2 for k in f.keys())
    table = (out / "results.md").read_text()
    assert "| synthesize (pool) |" in table and "| teacher UNet |" in table and "| default teacher |" in table
    assert "ccp teacher:" in table
