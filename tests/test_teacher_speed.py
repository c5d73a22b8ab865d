"""The sampling steps' fast paths of diffusion teachers (``teacher.noise_device``, ``channels_last``,
``compile``): the same samples within rounding, the same bytes run to run, one-line refusals."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from dtlabel.teachers import create_teacher
from dtlabel.teachers.tiny import build_tiny_ddpm


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ddpm(tmp_path_factory.mktemp("speed") / "ddpm", 32)


def _sample(folder: Path, **options: object) -> torch.Tensor:
    teacher = create_teacher("ddpm", folder, sample_steps=4, sampler="ddpm", **options)
    out = teacher.sample(3, seed=5, batch_size=2)
    assert out.features is not None
    return torch.cat([out.images.flatten(1), *(f.flatten(1) for f in out.features.values())], 1)


def test_noise_on_the_device_is_the_cpu_noise_on_a_cpu(ddpm_folder: Path) -> None:
    # the DDPM sampler draws step noise too: every draw goes through the per-sample generators
    assert torch.equal(_sample(ddpm_folder, noise_device="device"), _sample(ddpm_folder))
    assert torch.equal(_sample(ddpm_folder, noise_device="device"), _sample(ddpm_folder, noise_device="device"))


def test_channels_last_sampling_steps_give_the_same_samples_within_rounding(ddpm_folder: Path) -> None:
    fast = _sample(ddpm_folder, channels_last=True)
    torch.testing.assert_close(fast, _sample(ddpm_folder), atol=1e-4, rtol=1e-4)
    assert torch.equal(fast, _sample(ddpm_folder, channels_last=True))  # run to run, the same bytes


def test_compiled_sampling_steps_are_traced_while_the_feature_pass_stays_eager(
        ddpm_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # dynamo's eager backend: the tracing (hooks elsewhere in the module, guards) without the minutes
    # of inductor's CPU compile, which the slow test below pays
    traced: list[int] = []
    real = torch.compile

    def counting_backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        traced.append(len(gm.graph.nodes))
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(real, backend=counting_backend))
    torch._dynamo.reset()
    got = _sample(ddpm_folder, compile=True)
    torch.testing.assert_close(got, _sample(ddpm_folder), atol=1e-5, rtol=1e-5)
    assert traced, "the sampling steps did not go through torch.compile"
    teacher = create_teacher("ddpm", ddpm_folder, sample_steps=4, compile=True)
    teacher.sample(2, seed=1, batch_size=2)
    compiled = len(traced)
    teacher.sample(4, seed=9, batch_size=2)  # more batches of that shape, other steps: no new graph
    assert len(traced) == compiled


@pytest.mark.slow
def test_compiled_sampling_steps_with_inductor_on_a_cpu(ddpm_folder: Path) -> None:
    torch.testing.assert_close(_sample(ddpm_folder, compile=True), _sample(ddpm_folder), atol=1e-4, rtol=1e-4)


def test_an_unknown_noise_device_is_refused_in_one_line(cli, tmp_path: Path, ddpm_folder: Path) -> None:  # noqa: ANN001
    code, _, err = cli("synthesize", "--n", "2", "--teacher", ddpm_folder, "--preset", "tiny",
                       "teacher.noise_device=gpu", "--out", tmp_path / "s")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "noise_device" in err and "device" in err
    assert not (tmp_path / "s").exists()
