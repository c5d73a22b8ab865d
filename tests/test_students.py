"""Students: smp models by name, encoder init from timm-format weights, save -> plain smp / smp hub load, losses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError, ModelError
from dtlabel.students import create_student, load_backbone, load_student, read_student, resolve_arch, save_student

TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}

# The student registry contract: every configuration builds, runs, saves and reloads identically
# through dtlabel and through plain smp. (arch, encoder, smp kwargs, classes, (H, W))
STUDENTS = [
    ("Unet", "resnet18", TINY, 3, (32, 64)),
    ("Unet", "tu-mobilenetv3_small_050", TINY, 5, (32, 32)),
    ("FPN", "resnet18", {"encoder_depth": 3, "decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
     4, (64, 32)),
    ("FPN", "tu-mobilenetv3_small_050", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}, 2,
     (64, 64)),
    ("DeepLabV3Plus", "resnet18", {"encoder_depth": 3, "decoder_channels": 32}, 3, (32, 64)),
    ("DeepLabV3Plus", "tu-mobilenetv3_small_050", {"decoder_channels": 32}, 6, (64, 64)),
    ("PSPNet", "resnet18", {"encoder_depth": 4, "decoder_channels": 32}, 3, (64, 64)),
    # a vision transformer at the data set's size (not its 224), and ConvNeXt under two decoders
    ("DPT", "tu-vit_tiny_patch16_224", {"decoder_intermediate_channels": [8, 16, 32, 32],
                                        "decoder_fusion_channels": 16}, 3, (32, 64)),
    ("Unet", "tu-convnext_atto", {"decoder_channels": [32, 16, 8, 8, 8]}, 4, (32, 32)),
    ("UPerNet", "tu-convnext_atto", {"decoder_channels": 32}, 2, (64, 32)),
]


def _input(h: int, w: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed image batch (B, 3, H, W) in [-1, 1]."""
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.mark.parametrize("arch,encoder,kwargs", [
    ("Unet", "tu-mobilenetv3_small_050", TINY),
    ("unet", "resnet18", TINY),
    ("FPN", "tu-mobilenetv3_small_050", {}),
    ("deeplabv3+", "tu-mobilenetv3_small_050", {}),
])
def test_create_and_forward(arch: str, encoder: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model, spec = create_student(arch, encoder, 5, **kwargs)
    assert spec.arch == resolve_arch(arch) and spec.to_dict()["encoder_weights"] is None
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5, 32, 32)


def test_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown student architecture 'Unett' \(did you mean: Unet"):
        create_student("Unett", "resnet18", 3)
    with pytest.raises(ConfigError, match=r"unknown student encoder 'resnet19' \(did you mean: resnet18"):
        create_student("Unet", "resnet19", 3)
    with pytest.raises(ConfigError, match=r"unknown timm encoder 'tu-mobilenetv3_small_05' \(did you mean: tu-mobilenetv3_small_0"):
        create_student("Unet", "tu-mobilenetv3_small_05", 3)
    with pytest.raises(ModelError, match="cannot build Unet"):
        create_student("Unet", "resnet18", 3, encoder_depth=4, decoder_channels=[8, 8, 8])


def test_save_then_plain_smp_strict_load(tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    torch.manual_seed(1)
    model, spec = create_student("Unet", "tu-mobilenetv3_small_050", 4, **TINY)
    model.eval()
    save_student(tmp_path / "student", model, spec, class_names=list("abcd"))
    d = json.loads((tmp_path / "student" / "student.json").read_text())
    plain = smp.create_model(d["arch"], encoder_name=d["encoder_name"], encoder_weights=None, classes=d["classes"],
                             in_channels=3, **d["smp_kwargs"])
    plain.load_state_dict(load_file(str(tmp_path / "student" / "student.safetensors")), strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(plain.eval()(x), model(x))
    again, desc = load_student(tmp_path / "student")
    assert desc["class_names"] == list("abcd") and torch.equal(again(x), model(x))


def test_backbone_from_timm_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    src = timm.create_model("mobilenetv3_small_050")  # timm format, with classifier (ignored)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "mnv3.safetensors"))
    model, _ = create_student("Unet", "tu-mobilenetv3_small_050", 3, **TINY)
    info = load_backbone(model, tmp_path / "mnv3.safetensors")
    assert info["tensors"] > 10
    assert torch.equal(model.state_dict()["encoder.model.conv_stem.weight"], state["conv_stem.weight"])
    blocks = [k for k in model.state_dict() if k.startswith("encoder.model.blocks")][0]
    assert torch.equal(model.state_dict()[blocks], state[blocks[len("encoder.model."):].replace("blocks_", "blocks.", 1)])
    # the same file in a folder; torchvision-style resnet18 keys through torch.load(weights_only)
    (tmp_path / "dir").mkdir()
    save_file(state, str(tmp_path / "dir" / "model.safetensors"))
    assert load_backbone(model, tmp_path / "dir")["tensors"] == info["tensors"]
    res = timm.create_model("resnet18")
    torch.save(res.state_dict(), tmp_path / "r18.pth")
    r_model, _ = create_student("Unet", "resnet18", 3, **TINY)
    load_backbone(r_model, tmp_path / "r18.pth")
    assert torch.equal(r_model.encoder.conv1.weight, res.conv1.weight)


def test_backbone_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, _ = create_student("Unet", "tu-mobilenetv3_small_050", 3, **TINY)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="does not fit the student encoder: .* encoder tensors missing"):
        load_backbone(model, tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_backbone(model, tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match="not found"):
        load_backbone(model, tmp_path / "missing")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{broken")
    with pytest.raises(ModelError, match="run.json: not valid JSON .*; pass the weights file itself"):
        load_backbone(model, tmp_path / "run")


def test_losses() -> None:
    from dtlabel.losses import kd_loss, weighted_ce_loss

    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 4, 8, 8, generator=g)
    up = F.interpolate(t, scale_factor=2, mode="nearest")  # area-downsampled back to t exactly
    assert kd_loss(up, t, tau=4.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 4, 16, 16, generator=g)
    k4 = kd_loss(s, t, tau=4.0)
    s_lo = F.interpolate(s, size=(8, 8), mode="area")
    ref = F.kl_div((s_lo / 4).log_softmax(1), (t / 4).log_softmax(1), log_target=True, reduction="none").sum(1).mean() * 16
    assert k4.item() == pytest.approx(ref.item(), rel=1e-5)
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert kd_loss(s, t, valid=valid).item() == 0.0
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    ce = F.cross_entropy(s, target)
    assert weighted_ce_loss(s, target, torch.ones(2, 16, 16)).item() == pytest.approx(ce.item(), rel=1e-6)
    w = torch.zeros(2, 16, 16)
    w[0] = 1.0
    assert weighted_ce_loss(s, target, w).item() == pytest.approx(F.cross_entropy(s[:1], target[:1]).item(), rel=1e-6)


def test_augment_synth_resizes_and_keeps_logits_aligned() -> None:
    from dtlabel.synth.augment import augment_synth

    label = torch.zeros(2, 16, 16, dtype=torch.uint8)
    label[:, :, :8] = 1  # left half class 1
    logits = torch.zeros(2, 2, 8, 8, dtype=torch.float16)
    logits[:, 1, :, :4] = 5.0
    batch = {"image": torch.full((2, 3, 16, 16), 255, dtype=torch.uint8), "label": label,
             "uncertainty": torch.zeros(2, 16, 16), "logits": logits}
    g = torch.Generator().manual_seed(0)
    out = augment_synth(batch, (32, 32), hflip=False, scale=None, ignore_index=255, generator=g, device=torch.device("cpu"))
    assert out["image"].shape == (2, 3, 32, 32) and out["label"].shape == (2, 32, 32)
    assert out["logits"].shape == (2, 2, 8, 8) and bool(out["logits_valid"].all())
    assert torch.allclose(out["image"], torch.ones_like(out["image"]))
    assert (out["label"][:, :, :16] == 1).all() and (out["label"][:, :, 16:] == 0).all()
    zoom = augment_synth(batch, (16, 16), hflip=True, scale=(0.5, 0.5), ignore_index=255, generator=g,
                         device=torch.device("cpu"))
    assert (zoom["label"][:, 0, 0] == 255).all() and not bool(zoom["logits_valid"][:, 0, 0].any())
    assert bool(zoom["logits_valid"][:, 4, 4].all()) and math.isclose(float(zoom["uncertainty"][0, 0, 0]), 1.0)


def test_smp_from_pretrained_matches_load_student(tmp_path: Path, no_network: None) -> None:
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    model, spec = create_student("Unet", "tu-mobilenetv3_small_050", 4, **TINY)
    folder = save_student(tmp_path / "run" / "student", model, spec, class_names=list("abcd"), data="toy",
                          test_miou=12.5)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "student.json", "student.safetensors"]
    x = _input(32, 32)
    ours, _ = load_student(tmp_path / "run")
    hub = smp.from_pretrained(str(folder))
    assert type(hub) is type(ours) and not hub.training
    with torch.no_grad():
        assert torch.equal(hub(x), ours(x)) and torch.equal(ours(x), model.eval()(x))
    # one copy of the weights on disk: the hub name is a hard link to the dtlabel one
    a, b = (folder / "student.safetensors").stat(), (folder / "model.safetensors").stat()
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and a.st_nlink == 2
    config = json.loads((folder / "config.json").read_text())
    assert config["_model_class"] == "Unet" and config["encoder_weights"] is None and config["classes"] == 4
    card = (folder / "README.md").read_text()
    assert "toy" in card and "test_miou" in card


def test_hub_format_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    import os

    import segmentation_models_pytorch as smp

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_link)
    torch.manual_seed(4)
    model, spec = create_student("FPN", "resnet18", 3, encoder_depth=3, decoder_pyramid_channels=32,
                                 decoder_segmentation_channels=32)
    folder = save_student(tmp_path / "student", model, spec)
    assert (folder / "model.safetensors").stat().st_nlink == 1  # a second copy, still loadable
    x = _input(32, 32)
    with torch.no_grad():
        assert torch.equal(smp.from_pretrained(str(folder))(x), model.eval()(x))


@pytest.mark.parametrize("arch,encoder,kwargs,classes,size", STUDENTS,
                         ids=[f"{a}-{e}-{s[0]}x{s[1]}" for a, e, _, _, s in STUDENTS])
def test_student_contract(arch: str, encoder: str, kwargs: dict, classes: int, size: tuple[int, int],
                          tmp_path: Path, no_network: None) -> None:
    import segmentation_models_pytorch as smp

    torch.manual_seed(5)
    model, spec = create_student(arch, encoder, classes, **kwargs)
    h, w = size
    x = _input(h, w)
    out = model(x)
    assert out.shape == (2, classes, h, w)
    out.float().mean().backward()  # trainable end to end
    model.eval()
    with torch.no_grad():
        ref = model(x)
    folder = save_student(tmp_path / "student", model, spec, class_names=[f"c{i}" for i in range(classes)])
    again, desc = load_student(folder)
    hub = smp.from_pretrained(str(folder))
    assert desc["arch"] == arch and desc["classes"] == classes and not again.training and not hub.training
    with torch.no_grad():
        assert torch.equal(again(x), ref)
        assert torch.equal(hub(x), ref)


def test_fpn_and_pspnet_upsampling_follows_depth() -> None:
    model, spec = create_student("FPN", "resnet18", 2, encoder_depth=3, decoder_pyramid_channels=32,
                                 decoder_segmentation_channels=32)
    assert spec.smp_kwargs["upsampling"] == 1 and model.eval()(_input(32, 32)).shape == (2, 2, 32, 32)
    _, default = create_student("FPN", "resnet18", 2, decoder_pyramid_channels=32, decoder_segmentation_channels=32)
    assert "upsampling" not in default.smp_kwargs  # smp's default already fits depth 5
    with pytest.raises(ConfigError, match=r"encoder_depth=3 and upsampling=4 .* set student.kwargs.upsampling=8"):
        create_student("PSPNet", "resnet18", 2, encoder_depth=3, upsampling=4)


def test_read_student_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="folder not found"):
        read_student(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="cannot read student.json: not found; pass a finished train-student run"):
        read_student(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "student.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read student.json: not valid JSON"):
        read_student(tmp_path / "bad")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "student.json").write_text('{"format": "something-else"}')
    with pytest.raises(ModelError, match="is not a dtlabel student descriptor"):
        read_student(tmp_path / "other")
