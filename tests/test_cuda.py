"""The CUDA paths: features, mixed precision and the whole tiny chain on a GPU.

Skipped on machines without CUDA (CI, the development machines); benchmarks/gpu_check.py runs this
file first when a GPU is lent, so a CUDA-only break shows before any figure is taken.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dtlabel.teachers import TEACHERS, load_teacher
from dtlabel.teachers.tiny import build_tiny_ddpm, build_tiny_gan, build_tiny_sd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {"ddpm": (build_tiny_ddpm, 32), "stable-diffusion": (build_tiny_sd, 64), "gan": (build_tiny_gan, 32)}


@pytest.mark.parametrize("family", TEACHERS.names())
def test_features_on_cuda_match_cpu(family: str, tmp_path: Path) -> None:
    build, size = TINY[family]
    folder = build(tmp_path / family)
    images = torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    options = {} if family == "gan" else {"timesteps": (50,)}
    cpu = load_teacher(folder, amp="off", **options)
    gpu = load_teacher(folder, amp="off", **options).to("cuda")
    a, b = cpu.features(images, seed=[3, 4]), gpu.features(images, seed=[3, 4])
    assert list(a) == list(b)
    for name in a:
        assert b[name].device.type == "cuda" and b[name].shape == a[name].shape, name
        # the noise is drawn on the CPU for both; what differs is kernels (TF32 convolutions)
        rel = (b[name].cpu() - a[name]).norm() / a[name].norm()
        assert rel < 2e-2, (name, float(rel))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_teacher_mixed_precision_on_cuda(amp: str, cli, tmp_path: Path) -> None:  # noqa: ANN001
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / "fit"
    code, _, err = cli("fit-teacher", "--preset", "tiny", "--device", "cuda", f"amp={amp}", "fit.steps=6",
                       "fit.sample_n=2", "data.size=[32,32]", "--out", str(out), "-q")
    assert code == 0, err
    desc = json.loads((out / "run.json").read_text())
    assert desc["steps"] == 6 and math.isfinite(desc["final_loss"])
    teacher = load_teacher(out)  # the exported weights load on a CPU
    assert next(teacher.parameters()).device.type == "cpu"


def test_tiny_chain_on_cuda(tmp_path: Path) -> None:
    from dtlabel.cli import main
    from dtlabel.students.model import load_student

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--device", "cuda", "--out", str(out), "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"head", "student", "finetune", "scratch"}
    for key, row in results.items():
        assert 0.0 <= row["miou"] <= 100.0, key
    model, desc = load_student(out / "student", "cpu")  # trained on the GPU, loads on a CPU
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 32, 32))
    assert y.shape == (1, int(desc["classes"]), 32, 32)
