"""The shipped teachers (the default data's inside the package, dtlabel/models/; CCP's in the
repository's models/): they load as plain local diffusers folders, carry a model card with the
command that made them, and serve dtlabel commands (the demo's default, as ``models/default``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for models in (ROOT / "dtlabel" / "models", ROOT / "models") if models.is_dir()
                 for p in models.iterdir() if (p / "model_index.json").is_file())


def test_the_demo_teacher_is_package_data() -> None:
    import dtlabel
    from dtlabel.teachers import resolve_model_root

    root = resolve_model_root("models/default")  # no such folder in the tests' working directory
    assert root == Path(dtlabel.__file__).resolve().parent / "models" / "default"
    assert (root / "model_index.json").is_file()


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_loads_as_a_local_diffusers_folder(folder: Path) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder), subfolder="unet")
    DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    weights = list((folder / "unet").glob("*.safetensors"))
    assert len(weights) == 1 and not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert weights[0].stat().st_size < 20 * 2**20  # fp16, small enough to keep in git
    card = (folder / "README.md").read_text()
    assert "dtlabel fit-teacher" in card and "steps" in card
    h, w = json.loads((folder / "dtlabel_teacher.json").read_text())["size"]
    with torch.no_grad():
        out = unet(torch.zeros(1, 3, h, w), torch.tensor([50])).sample
    assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()


def test_a_head_trains_on_the_demo_teacher(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # ``models/default`` is the shipped one from any working directory
    code, _, err = cli("train-head", "--preset", "tiny", "--labels", "2", "--teacher", "models/default",
                       "data.size=[64,64]", "data.n_test=2", "head.steps=1", "head.val_size=0", "--out", tmp_path / "h")
    assert code == 0, err
    desc = json.loads((tmp_path / "h" / "run.json").read_text())
    assert desc["teacher"] == "models/default"
    assert 0.0 <= json.loads((tmp_path / "h" / "metrics.json").read_text())["miou"] <= 100.0
