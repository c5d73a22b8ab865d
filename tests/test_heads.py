"""Heads from a FeatureSpec: shapes, ranges, uncertainty, learning, save/load, registry errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError, ModelError
from dtlabel.features import FeatureSpec
from dtlabel.heads import (
    HEADS,
    Head,
    Interpreter,
    create_head,
    entropy,
    head_class,
    head_options,
    image_score,
    js_divergence,
    load_head,
    register_head,
    sample_features,
)
from dtlabel.heads.base import pixel_grid
from dtlabel.heads.mlp import sample_pixels

SPEC = FeatureSpec(("up_blocks.0@t=50", "up_blocks.1@t=50", "up_blocks.2@t=50"), (24, 16, 8), (8, 4, 2))
SMALL = {"interpreter": {"width": 16}, "mlp-ensemble": {"members": 3, "pixels_per_image": 64}}
# Every option of every registered head, none at its default: the contract tests run over all heads.
FULL = {
    "interpreter": {"width": 8, "dropout": 0.2, "dice_weight": 2.0, "norm_groups": 4, "max_resolution_stride": 2},
    "mlp-ensemble": {"members": 2, "hidden": [16, 8], "vote": "majority", "pixels_per_image": 32},
}


def _features(b: int = 2, image: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, c, image // s, image // s, generator=g) for n, c, s in SPEC}


@pytest.mark.parametrize("kind", HEADS.names())
def test_shapes_ranges_and_loss(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, SPEC, 5, **SMALL[kind])
    feats = _features()
    masks = torch.randint(0, 5, (2, 24, 24))
    masks[:, :4] = 255
    losses = head.loss(feats, masks, ignore_index=255, generator=torch.Generator().manual_seed(0))
    assert losses["loss"].requires_grad and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    probs, unc = head.predict(feats)  # default size: the image size of the features
    assert probs.shape == (2, 5, 32, 32) and unc.shape == (2, 32, 32)
    assert probs.min() >= 0 and torch.allclose(probs.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert unc.min() >= 0 and unc.max() <= math.log(5) + 1e-5
    probs, unc = head.predict(feats, size=(20, 28))
    assert probs.shape == (2, 5, 20, 28) and unc.shape == (2, 20, 28)
    assert head.training  # predict restores the mode


def test_interpreter_uncertainty_is_predictive_entropy() -> None:
    head = create_head("interpreter", SPEC, 4, width=16)
    probs, unc = head.predict(_features())
    assert torch.allclose(unc, -(probs * probs.log()).sum(1), atol=1e-5)


def test_interpreter_single_map_and_resolution_cap() -> None:
    spec = FeatureSpec(("mid",), (12,), (4,))
    head = create_head("interpreter", spec, 3, width=8)
    probs, _ = head.predict({"mid": torch.randn(1, 12, 8, 8)})
    assert probs.shape == (1, 3, 32, 32)
    capped = create_head("interpreter", SPEC, 3, width=8, max_resolution_stride=4)
    assert capped(_features(), None).shape[-2:] == (8, 8)  # the stride-2 map was pooled to stride 4


def test_js_divergence_zero_when_members_agree() -> None:
    torch.manual_seed(0)
    head = create_head("mlp-ensemble", SPEC, 5, members=4)
    for m in head.members[1:]:
        m.load_state_dict(head.members[0].state_dict())
    _, unc = head.predict(_features())
    assert float(unc.abs().max()) < 1e-5
    # two members certain of different classes: JS = log 2
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(js_divergence(p)) == pytest.approx(math.log(2), abs=1e-5)


def test_majority_vote_gives_vote_fractions() -> None:
    torch.manual_seed(0)
    head = create_head("mlp-ensemble", SPEC, 4, members=5, vote="majority")
    probs, _ = head.predict(_features())
    assert torch.allclose(probs * 5, (probs * 5).round(), atol=1e-5)


def test_hidden_widths_follow_the_class_count() -> None:
    assert create_head("mlp-ensemble", SPEC, 7, members=1).kwargs["hidden"] == [128, 32]
    wide = create_head("mlp-ensemble", SPEC, 34, members=1)
    assert wide.kwargs["hidden"] == [256, 128]
    assert wide.members[0][0].in_features == SPEC.total_channels


def test_sampled_features_equal_full_upsampling() -> None:
    feats = _features()
    full = torch.cat([F.interpolate(feats[n], size=(32, 32), mode="bilinear", align_corners=False) for n in SPEC.names], 1)
    pts = sample_features(feats, SPEC.names, pixel_grid((32, 32)).expand(2, -1, -1))
    assert torch.allclose(pts.reshape(2, 32, 32, -1).permute(0, 3, 1, 2), full, atol=1e-5)


def test_sample_pixels_only_labeled_and_bounded() -> None:
    masks = torch.full((2, 8, 8), 255)
    masks[0, 2, 3] = 1
    masks[0, 5, 5] = 2
    coords, targets = sample_pixels(masks, 16, 255, 3, torch.Generator().manual_seed(0))
    assert coords.shape == (2, 16, 2) and targets.shape == (2, 16)
    assert set(targets[0].tolist()) <= {1, 2} and (targets[1] == 255).all()  # image 1 has no labeled pixel


@pytest.mark.parametrize("kind", HEADS.names())
def test_heads_learn_a_separable_problem(kind: str) -> None:
    """Features that encode the mask: both heads must fit it (a smoke test of the training path)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 3, (4, 4, 4), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocks
    onehot = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    feats = {n: F.avg_pool2d(onehot, s).repeat(1, c // 3 + 1, 1, 1)[:, :c] + 0.05 * torch.randn(4, c, 32 // s, 32 // s, generator=g)
             for n, c, s in SPEC}
    head = create_head(kind, SPEC, 3, **SMALL[kind])
    opt = torch.optim.AdamW(head.parameters(), lr=head.default_lr * (3 if kind == "mlp-ensemble" else 1))
    for step in range(60):
        loss = head.loss(feats, masks, generator=torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    probs, _ = head.predict(feats, (32, 32))
    assert (probs.argmax(1) == masks).float().mean() > 0.9


@pytest.mark.parametrize("kind", HEADS.names())
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = create_head(kind, SPEC, 4, **SMALL[kind])
    head.loss(_features(), torch.randint(0, 4, (2, 32, 32)))["loss"].backward()  # BN running stats move
    feats = _features(seed=3)
    before = head.predict(feats)
    head.save(tmp_path / "run" / "head", teacher_hash="abc123", class_names=["a", "b", "c", "d"], label_ids=["1", "7"],
              data="toy")
    assert {p.name for p in (tmp_path / "run" / "head").iterdir()} == {"head.json", "head.safetensors"}
    desc = json.loads((tmp_path / "run" / "head" / "head.json").read_text())
    assert desc["kind"] == kind and desc["feature_spec"] == SPEC.to_dict() and desc["teacher_hash"] == "abc123"
    for path in (tmp_path / "run" / "head", tmp_path / "run"):  # the head folder or the run folder
        loaded = load_head(path)
        assert type(loaded) is type(head) and not loaded.training
        assert loaded.meta["class_names"] == ["a", "b", "c", "d"] and loaded.meta["label_ids"] == ["1", "7"]
        after = loaded.predict(feats)
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_unknown_kind_and_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown head kind 'interpeter' \(did you mean: interpreter\?\)"):
        create_head("interpeter", SPEC, 3)
    with pytest.raises(ConfigError, match=r"unknown option 'widht' for head 'interpreter' \(did you mean: width\?\)"):
        create_head("interpreter", SPEC, 3, widht=8)
    with pytest.raises(ConfigError, match="unknown vote"):
        create_head("mlp-ensemble", SPEC, 3, vote="max")


def test_load_errors_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="head folder not found"):
        load_head(tmp_path / "nope")
    with pytest.raises(ModelError, match="no head.json"):
        load_head(tmp_path)
    head = create_head("interpreter", SPEC, 3, width=8)
    head.save(tmp_path / "h")
    desc = json.loads((tmp_path / "h" / "head.json").read_text())
    desc["kwargs"]["width"] = 16
    (tmp_path / "h" / "head.json").write_text(json.dumps(desc))
    with pytest.raises(ModelError, match="does not match"):
        load_head(tmp_path / "h")
    (tmp_path / "h" / "head.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_head(tmp_path / "h")


def test_features_that_do_not_match_the_spec() -> None:
    head = create_head("interpreter", SPEC, 3, width=8)
    feats = _features()
    with pytest.raises(ModelError, match="features lack 'up_blocks.2@t=50'"):
        head.predict({k: v for k, v in feats.items() if k != "up_blocks.2@t=50"})
    feats["up_blocks.0@t=50"] = feats["up_blocks.0@t=50"][:, :5]
    with pytest.raises(ModelError, match=r"expects \(B, 24, h, w\)"):
        head.predict(feats)


def test_image_score_is_mean_of_top_ten_percent() -> None:
    unc = torch.arange(20, dtype=torch.float32).reshape(1, 4, 5)  # top 10% of 20 pixels: 19, 18
    assert image_score(unc).tolist() == [18.5]
    assert image_score(unc, top=1.0).tolist() == [9.5]


# ---------------------------------------------------------------------------- registry contract
def check_head_contract(kind: str, options: dict, tmp_path: Path) -> None:
    """What every head promises: sized from a spec, a finite loss, probabilities, an exact reload."""
    torch.manual_seed(0)
    head = create_head(kind, SPEC, 4, **options)
    assert type(head) is head_class(kind) and head.kind == kind
    assert head.kwargs == options  # recorded without the head listing its options
    assert json.loads(json.dumps(head.describe()))["kwargs"] == options
    masks = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    losses = head.loss(_features(), masks, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    losses["loss"].backward()
    feats = _features(seed=2)
    probs, unc = head.predict(feats, size=(16, 24))
    assert probs.shape == (2, 4, 16, 24) and unc.shape == (2, 16, 24)
    assert probs.min() >= 0 and torch.allclose(probs.sum(1), torch.ones(2, 16, 24), atol=1e-5) and unc.min() >= 0
    head.save(tmp_path / kind)
    loaded = load_head(tmp_path / kind)
    assert type(loaded) is type(head) and loaded.kwargs == head.kwargs
    again = loaded.predict(feats, size=(16, 24))
    assert torch.equal(probs, again[0]) and torch.equal(unc, again[1])


@pytest.mark.parametrize("kind", HEADS.names())
def test_every_head_keeps_the_head_contract(kind: str, tmp_path: Path) -> None:
    assert sorted(FULL[kind]) == sorted(head_options(kind)), "FULL must give every option of the head"
    check_head_contract(kind, FULL[kind], tmp_path)


@pytest.mark.parametrize("kind", HEADS.names())
def test_defaults_are_recorded_too(kind: str) -> None:
    head = create_head(kind, SPEC, 3)
    assert list(head.kwargs) == head_options(kind)
    assert create_head(kind, SPEC, 3, **head.kwargs).kwargs == head.kwargs


# ---------------------------------------------------------------------------- plug-in heads
class MeanHead(Head):
    """A toy head: one 1x1 conv on the upsampled, concatenated maps."""

    uncertainty_kind = "predictive entropy (nats)"

    def __init__(self, spec: FeatureSpec, num_classes: int, scale: float = 1.0, maps: list | None = None) -> None:
        super().__init__(spec, num_classes)
        self.maps = list(maps or spec.names)
        self.scale = float(scale)
        self.conv = torch.nn.Conv2d(sum(spec.channels[spec.index(n)] for n in self.maps), num_classes, 1)

    def forward(self, features: dict, size: tuple[int, int]) -> torch.Tensor:
        up = [F.interpolate(features[n], size=size, mode="bilinear", align_corners=False) for n in self.maps]
        return self.conv(torch.cat(up, 1) * self.scale)

    def loss(self, features: dict, masks: torch.Tensor, ignore_index: int = 255,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self(features, tuple(masks.shape[-2:])), masks.long(), ignore_index=ignore_index)
        return {"loss": ce, "ce": ce.detach()}

    def _predict(self, features: dict, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self(features, size).softmax(1)
        return probs, entropy(probs, 1)


class DeepInterpreter(Interpreter):
    """A plug-in built on a built-in: its own option, the parent's set from it."""

    def __init__(self, spec: FeatureSpec, num_classes: int, depth: int = 2) -> None:
        super().__init__(spec, num_classes, width=4 * depth, norm_groups=2)


@pytest.fixture
def plug_ins() -> Iterator[None]:
    register_head("toy-mean")(MeanHead)
    register_head("toy-deep")(DeepInterpreter)
    try:
        yield
    finally:
        HEADS.unregister("toy-mean")
        HEADS.unregister("toy-deep")


def test_a_plug_in_head_is_created_by_name(plug_ins: None, tmp_path: Path) -> None:
    assert {"toy-mean", "toy-deep"} <= set(HEADS.names()) and MeanHead.kind == "toy-mean"
    assert head_options("toy-mean") == ["scale", "maps"]
    assert create_head("toy-mean", SPEC, 3).kwargs == {"scale": 1.0, "maps": None}
    check_head_contract("toy-mean", {"scale": 0.5, "maps": ["up_blocks.1@t=50", "up_blocks.2@t=50"]}, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown option 'scael' for head 'toy-mean' \(did you mean: scale\?\)"):
        create_head("toy-mean", SPEC, 3, scael=2.0)


def test_a_subclass_records_its_own_arguments(plug_ins: None, tmp_path: Path) -> None:
    head = create_head("toy-deep", SPEC, 3, depth=3)
    assert head.kwargs == {"depth": 3}  # the outermost constructor's arguments, not the parent's
    assert head.lateral[0].out_channels == 12
    check_head_contract("toy-deep", {"depth": 1}, tmp_path)


def test_a_duplicate_head_name_is_refused(plug_ins: None) -> None:
    with pytest.raises(ValueError, match="'toy-mean' is already registered to MeanHead"):
        register_head("toy-mean")(DeepInterpreter)
    with pytest.raises(ValueError, match="'interpreter' is already registered to Interpreter"):
        register_head("interpreter")(MeanHead)
    assert HEADS["interpreter"] is Interpreter and Interpreter.kind == "interpreter"
    HEADS.unregister("toy-mean")
    with pytest.raises(ConfigError, match="unknown head kind 'toy-mean'"):
        create_head("toy-mean", SPEC, 3)
    register_head("toy-mean")(MeanHead)  # the fixture unregisters it
