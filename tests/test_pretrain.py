"""pretrain: the losses on hand-made tensors, the regressor's shapes, and the command end to end on a
tiny teacher (outputs, the backbone in timm and smp, mix distillation, time budget + resume, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q", "data.n_unlabeled=8", "data.n_labeled=20", "data.n_val=4", "data.n_test=8",
        "pretrain.steps=4", "pretrain.pictures=2")


# ---------------------------------------------------------------------------------------------- losses
def test_teacher_norm_dimensions() -> None:
    from dtlabel.pretrain.losses import teacher_norm

    x = torch.randn(2, 5, 3, 4) * 7 + 3
    chw = teacher_norm(x, "chw")
    assert torch.allclose(chw.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)  # per sample over C, H, W
    assert torch.allclose(chw.var(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)
    c = teacher_norm(x, "c")
    assert torch.allclose(c.mean(dim=1), torch.zeros(2, 3, 4), atol=1e-5)  # per position over channels
    assert torch.allclose(c.pow(2).sum(1), torch.full((2, 3, 4), 5.0), atol=1e-2)  # the flat energy AT cannot use
    assert torch.equal(teacher_norm(x, "none"), x)


def test_attention_loss_is_per_sample_and_scale_free() -> None:
    from dtlabel.pretrain.losses import attention_loss, attention_map

    a = torch.randn(3, 4, 6, 6)
    q = attention_map(a)
    assert q.shape == (3, 36) and torch.allclose(q.norm(dim=1), torch.ones(3))
    assert attention_loss(a * 5.0, a).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    b = torch.randn(3, 4, 6, 6)
    one = attention_loss(a[:1], b[:1])
    batch = attention_loss(torch.cat([a[:1]] * 4), torch.cat([b[:1]] * 4))
    assert batch.item() == pytest.approx(one.item(), rel=1e-6)  # independent of the batch size
    # different sizes: compared at the smaller one
    assert attention_loss(torch.ones(1, 2, 8, 8), torch.ones(1, 2, 4, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_distillation_loss_values() -> None:
    from dtlabel.pretrain.losses import feature_distillation_loss, teacher_norm

    t = {"a": torch.randn(2, 3, 4, 4), "b": torch.randn(2, 5, 2, 2)}
    perfect = {k: teacher_norm(v, "chw") for k, v in t.items()}
    out = feature_distillation_loss(perfect, t, "chw", at_weight=10.0)
    assert out["mse"].item() == pytest.approx(0.0, abs=1e-10) and out["at"].item() == pytest.approx(0.0, abs=1e-6)
    zero = {k: torch.zeros_like(v) for k, v in t.items()}
    out = feature_distillation_loss(zero, t, "chw", at_weight=0.0)
    assert out["mse"].item() == pytest.approx(1.0, rel=1e-3)  # the normalised target has unit variance
    assert out["loss"].item() == pytest.approx(out["mse"].item())


def test_regressor_shapes_and_level_matching() -> None:
    from dtlabel.features import FeatureSpec
    from dtlabel.pretrain.model import DistillationNet, create_backbone, match_levels

    spec = FeatureSpec(("u0", "u1"), (12, 6), (8, 2))
    levels = match_levels(spec, (32, 48), (64, 96))  # the teacher at half the backbone's resolution
    assert levels == {"u0": 2, "u1": 0}  # 4x6 -> stride 16 level, 16x24 -> stride 4 level
    assert match_levels(spec, (32, 48), (64, 96), {"u0": 3}) == {"u0": 3, "u1": 0}
    net = DistillationNet(create_backbone("resnet18"), spec, levels, width=16, num_classes=3)
    maps, logits = net(torch.zeros(2, 3, 64, 96))
    assert maps["u0"].shape == (2, 12, 4, 6) and maps["u1"].shape == (2, 6, 16, 24)
    assert logits.shape == (2, 3, 16, 24)


# ---------------------------------------------------------------------------------------------- command
@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    return build_tiny_ddpm(tmp_path_factory.mktemp("teacher") / "ddpm", sample_size=32)


@pytest.fixture(scope="module")
def pretrained(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "--out", str(out)]) == 0
    return out


def test_outputs_and_timm_strict_load(pretrained: Path) -> None:
    import timm
    from safetensors.torch import load_file

    for name in ("config.yaml", "pretrain.log", "run.json", "metrics.jsonl", "loss.png", "features.png",
                 "backbone/backbone.safetensors", "backbone/backbone.json"):
        assert (pretrained / name).is_file(), name
    desc = json.loads((pretrained / "run.json").read_text())
    assert desc["steps"] == 4 and desc["timm_name"] == "resnet18" and desc["mix"] is False
    assert set(desc["mapping"]) == {"up_blocks.0@t=50", "up_blocks.1@t=50", "up_blocks.2@t=50"}
    assert desc["images_seen"] == 16 and desc["pool_size"] == 8 + 20  # unlabeled + labeled train pool, no val/test
    lines = [json.loads(ln) for ln in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all({"mse", "at"} <= r.keys() for r in lines)
    model = timm.create_model("resnet18", features_only=True, pretrained=False)
    model.load_state_dict(load_file(str(pretrained / "backbone" / "backbone.safetensors")), strict=True)


def test_student_starts_from_the_pretrained_backbone(pretrained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "student"
    assert main(["train-student", "--preset", "tiny", "-q", "--labels", "4", "--backbone", str(pretrained),
                 "student.encoder=tu-resnet18", "student.epochs=1", "data.n_test=4", "student.val_size=0",
                 "--out", str(out)]) == 0
    desc = json.loads((out / "run.json").read_text())
    assert desc["backbone"]["file"].endswith("backbone.safetensors") and desc["backbone"]["tensors"] > 50
    # smp's own resnet18 encoder takes the same weights
    import segmentation_models_pytorch as smp

    from dtlabel.students import load_backbone

    model = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=3, encoder_depth=3,
                             decoder_channels=[32, 16, 8])
    load_backbone(model, pretrained)
    state = load_file(str(pretrained / "backbone" / "backbone.safetensors"))
    assert torch.equal(model.encoder.state_dict()["conv1.weight"], state["conv1.weight"])


def test_mix_distillation_with_a_head(teacher: Path, tmp_path: Path) -> None:
    head = tmp_path / "head"
    assert main(["train-head", "--preset", "tiny", "-q", "--labels", "4", "--teacher", str(teacher), "data.n_test=4",
                 "head.val_size=0", "head.overlays=0", "--out", str(head)]) == 0
    out = tmp_path / "mix"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "--head", str(head), "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["mix"] is True
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd"] >= 0 for r in lines)
    assert lines[0]["loss"] == pytest.approx(lines[0]["mse"] + 10 * lines[0]["at"] + lines[0]["kd"], rel=1e-4)


def test_time_budget_then_resume_matches(teacher: Path, pretrained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "split"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "pretrain.max_minutes=0", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["stopped_early"] is True  # the backbone so far is exported
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "--resume", "--out", str(out)]) == 0
    a, b = (load_file(str(p / "backbone" / "backbone.safetensors")) for p in (pretrained, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_feature_cache_computes_each_draw_once_and_changes_nothing(teacher: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # 28 pool images, batch 4, 21 steps = 3 passes with one noise draw: every (image, flip) is computed once
    args = [*TINY, "--teacher", str(teacher), "pretrain.steps=21", "pretrain.cache_draws=1", "pretrain.pictures=0"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["pretrain", *args, "--out", str(first)]) == 0
    entries = [p for p in (first / "feature_cache").rglob("*") if p.is_dir() and len(p.name) > 2]
    assert 28 <= len(entries) <= 2 * 28 < 21 * 4  # at most one entry per image and flip, reused across passes
    # a second run reads every target from the first run's cache: the same backbone, byte for byte
    assert main(["pretrain", *args, f"pretrain.cache_dir={first / 'feature_cache'}", "--out", str(second)]) == 0
    assert not (second / "feature_cache").exists()
    a, b = (load_file(str(p / "backbone" / "backbone.safetensors")) for p in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "run.json").read_text())["cache_draws"] == 1


def test_input_errors(teacher: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    def err(*args: str) -> str:
        code, _, e = cli("pretrain", *TINY, "--out", tmp_path / str(len(list(tmp_path.iterdir()))), *args)
        assert code == 2 and e.startswith("dtlabel: error: ") and e.count("\n") == 1, e
        return e

    assert "pretrain needs --teacher DIR" in err()
    assert "teacher folder not found" in err("--teacher", str(tmp_path / "missing"))
    assert "not a timm CNN" in err("--teacher", str(teacher), "pretrain.backbone=resnet19x")
    assert "cuts images into 16x16 patches" in err("--teacher", str(teacher), "pretrain.backbone=vit_tiny_patch16_224",
                                                   "data.size=[40,40]")
    assert "pretrain.teacher_norm=batch" in err("--teacher", str(teacher), "pretrain.teacher_norm=batch")
    assert "pretrain.cache_draws=-1" in err("--teacher", str(teacher), "pretrain.cache_draws=-1")
    assert "pretrain.mapping names ['nope']" in err("--teacher", str(teacher), "+pretrain.mapping={nope: 1}")
    assert "--head" in err("--teacher", str(teacher), "--head", str(tmp_path / "nohead"))


def test_a_pretrain_checkpoint_is_a_backbone_too(pretrained: Path) -> None:
    """Points of a gain-against-pretraining-time curve: any kept checkpoint feeds --backbone."""
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    from dtlabel.students import load_backbone

    ckpt = sorted((pretrained / "checkpoints").glob("step_*"))[-1]  # the last one: the exported backbone
    model = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=3, encoder_depth=3,
                             decoder_channels=[32, 16, 8])
    assert load_backbone(model, ckpt)["tensors"] > 50
    state = load_file(str(pretrained / "backbone" / "backbone.safetensors"))
    assert all(torch.equal(model.encoder.state_dict()[k], state[k]) for k in ("conv1.weight", "layer4.1.bn2.weight"))


STUDENT = ("train-student", "--preset", "tiny", "-q", "--labels", "4", "student.epochs=1", "student.epoch_steps=2",
           "data.n_test=4", "student.val_size=0")


def test_a_vision_transformer_pretrains_through_its_feature_pyramid(teacher: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    """ViT-tiny at 32x32 (2x2 patches): the simple pyramid gives strides 4-32, the export is the ViT
    itself (timm.create_model strict), and a DPT student starts from it; a CNN student refuses it."""
    import timm
    from safetensors.torch import load_file

    run = tmp_path / "vit"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "pretrain.backbone=vit_tiny_patch16_224",
                 "--out", str(run)]) == 0
    desc = json.loads((run / "backbone" / "backbone.json").read_text())
    assert desc["timm_name"] == "vit_tiny_patch16_224" and desc["features_only"] is False
    state = load_file(str(run / "backbone" / "backbone.safetensors"))
    timm.create_model("vit_tiny_patch16_224", pretrained=False).load_state_dict(state, strict=True)
    student = tmp_path / "dpt"
    assert main([*STUDENT, "student.arch=DPT", "student.encoder=tu-vit_tiny_patch16_224", "--backbone", str(run),
                 "--out", str(student)]) == 0
    assert json.loads((student / "run.json").read_text())["backbone"]["tensors"] == len(state)
    code, _, err = cli(*STUDENT, "--backbone", str(run), "--out", tmp_path / "cnn")
    assert code == 2 and err.count("\n") == 1
    assert "use student.encoder=tu-vit_tiny_patch16_224 with student.arch=DPT" in err


def test_dpt_reassembly_gives_the_four_levels_from_four_blocks(teacher: Path, tmp_path: Path) -> None:
    """pretrain.vit_pyramid=reassemble: strides 4-32 from blocks 2, 5, 8 and 11 of ViT-tiny (every
    block trains, the last one too), and the export is the plain ViT all the same."""
    import timm
    from safetensors.torch import load_file

    from dtlabel.pretrain.vit import ViTPyramid

    torch.manual_seed(0)
    pyramid = ViTPyramid("vit_tiny_patch16_224", "reassemble")
    assert pyramid.blocks == [2, 5, 8, 11]
    maps = pyramid(torch.randn(2, 3, 64, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 48, 16, 8), (2, 96, 8, 4), (2, 192, 4, 2), (2, 192, 2, 1)]
    sum(m.square().mean() for m in maps).backward()
    assert pyramid.vit.blocks[2].mlp.fc2.weight.grad.abs().sum() > 0  # the fine levels pull on an early block
    run = tmp_path / "vit-dpt"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "pretrain.backbone=vit_tiny_patch16_224",
                 "pretrain.vit_pyramid=reassemble", "--out", str(run)]) == 0
    state = load_file(str(run / "backbone" / "backbone.safetensors"))
    timm.create_model("vit_tiny_patch16_224", pretrained=False).load_state_dict(state, strict=True)


def test_convnext_pretrains_through_the_four_stage_path(teacher: Path, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    run = tmp_path / "convnext"
    assert main(["pretrain", *TINY, "--teacher", str(teacher), "pretrain.backbone=convnext_atto",
                 "--out", str(run)]) == 0
    state = load_file(str(run / "backbone" / "backbone.safetensors"))
    model = timm.create_model("convnext_atto", features_only=True, pretrained=False)
    model.load_state_dict(state, strict=True)
    student = tmp_path / "student"
    assert main([*STUDENT, "student.encoder=tu-convnext_atto", "--backbone", str(run), "--out", str(student)]) == 0
    # the tiny Unet reads the first stages (encoder_depth 3): their tensors all come from the run
    assert 40 < json.loads((student / "run.json").read_text())["backbone"]["tensors"] < len(state)
