"""One way to save a model with its config (dtlabel.saving): recorded constructor options, the
weights + descriptor folder, and models that load back from it with nothing but their class."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtlabel.errors import ModelError
from dtlabel.saving import ModelFiles, RecordsConfig

FILES = ModelFiles("toy", "dtlabel-toy/1")


class Base(RecordsConfig, torch.nn.Module):
    built_from = ("channels",)
    record_inherited = True

    def __init__(self, channels: int, *, width: int = 4, scales: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, width, 1)
        self.record(scales=sorted(scales))  # a normalised value replaces the given one


class Child(Base):
    def __init__(self, channels: int, *, gain: float = 2.0, **kwargs: object) -> None:
        super().__init__(channels, **kwargs)  # type: ignore[arg-type]
        self.gain = gain


def test_constructor_options_are_recorded_with_defaults_and_parents() -> None:
    model = Child(3, width=6, scales=(4, 1))
    assert model.kwargs == {"gain": 2.0, "width": 6, "scales": [1, 4]}
    again = Child(3, **model.kwargs)  # the record rebuilds the same module
    assert again.kwargs == model.kwargs and again.conv.out_channels == 6


def test_a_saved_folder_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Child(3, width=5)
    folder = FILES.save(tmp_path / "toy", model.state_dict(), {"kwargs": model.kwargs}, metadata={"kind": "child"})
    assert sorted(p.name for p in folder.iterdir()) == ["toy.json", "toy.safetensors"]
    desc = json.loads((folder / "toy.json").read_text())
    assert list(desc)[0] == "format" and desc["format"] == "dtlabel-toy/1"
    assert stat.S_IMODE((folder / "toy.safetensors").stat().st_mode) & 0o044  # an ordinary file's permissions
    rebuilt = FILES.load_into(Child(3, **FILES.read(folder)["kwargs"]), folder)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(rebuilt.conv(x), model.conv(x))
    assert torch.equal(load_file(str(folder / "toy.safetensors"))["conv.weight"], model.conv.weight.detach())


def test_reading_a_wrong_or_damaged_folder_is_one_model_error(tmp_path: Path) -> None:
    folder = FILES.save(tmp_path / "toy", Child(3).state_dict(), {"kwargs": {}})
    with pytest.raises(ModelError, match="does not match toy.json"):
        FILES.load_into(Child(3, width=7), folder)
    with pytest.raises(ModelError, match="lacks 'spec'"):
        FILES.read(folder, required=("spec",))
    (folder / "other.json").write_text((folder / "toy.json").read_text())
    with pytest.raises(ModelError, match=r"is not a dtlabel other descriptor \(format 'dtlabel-toy/1'"):
        ModelFiles("other", "dtlabel-other/1").read(folder)
    (folder / "toy.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="--init RUN: cannot read"):
        FILES.state(folder, what="--init RUN")
