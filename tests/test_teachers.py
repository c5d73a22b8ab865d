"""Tests of dtlabel.teachers on tiny random models (32 px DDPM and GAN, 64 px Stable Diffusion), CPU only."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError, ModelError
from dtlabel.heads import create_head
from dtlabel.teachers import (
    TEACHERS,
    DDPMTeacher,
    DiffusionTeacher,
    FeatureSpec,
    GanTeacher,
    SampleOutput,
    StableDiffusionTeacher,
    Teacher,
    create_teacher,
    detect_family,
    detection_order,
    hash_model_folder,
    load_teacher,
    register_teacher,
    teacher_from_config,
)
from dtlabel.teachers.tiny import build_tiny_ddpm, build_tiny_gan, build_tiny_sd

# Every registered family needs a tiny model here: the contract tests run over all of them.
TINY = {"ddpm": build_tiny_ddpm, "stable-diffusion": build_tiny_sd, "gan": build_tiny_gan}
SIZES = {"ddpm": 32, "stable-diffusion": 64, "gan": 32}
#: the families that read features by noising an image (timesteps, noise draws, samplers)
DIFFUSION = [name for name in TEACHERS.names() if issubclass(TEACHERS[name], DiffusionTeacher)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    missing = [name for name in TEACHERS.names() if name not in TINY]
    assert not missing, f"registered teacher families without a tiny test model: {missing}"
    return {name: TINY[name](root / name) for name in TEACHERS.names()}


@pytest.fixture(scope="module")
def teachers(model_dirs: dict[str, Path]) -> dict[str, Teacher]:
    return {name: load_teacher(path, **({"timesteps": (50, 150)} if name in DIFFUSION else {}))
            for name, path in model_dirs.items()}


def images(family: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = SIZES[family]
    return torch.rand((n, 3, s, s), generator=g) * 2 - 1


FAMILIES = pytest.mark.parametrize("family", TEACHERS.names())
DIFFUSION_FAMILIES = pytest.mark.parametrize("family", DIFFUSION)


# ---------------------------------------------------------------------------- feature spec
def test_feature_spec_round_trip() -> None:
    spec = FeatureSpec(("a@t=50", "b@t=50"), (8, 16), (4, 8))
    assert spec.total_channels == 24
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert list(spec) == [("a@t=50", 8, 4), ("b@t=50", 16, 8)]
    with pytest.raises(ConfigError, match="same length"):
        FeatureSpec(("a",), (1, 2), (1,))
    with pytest.raises(ConfigError, match="missing"):
        FeatureSpec.from_dict({"names": ["a"]})


@DIFFUSION_FAMILIES
def test_features_match_spec(teachers: dict[str, Teacher], family: str) -> None:
    teacher = teachers[family]
    spec = teacher.feature_spec
    feats = teacher.features(images(family))
    assert tuple(feats) == spec.names
    size = SIZES[family]
    for (name, channels, stride), f in zip(spec, feats.values()):
        assert f.dtype == torch.float32
        assert tuple(f.shape) == (2, channels, size // stride, size // stride), name
    assert all(name.endswith("@t=50+150") for name in spec.names)
    assert len(set(spec.strides)) > 1  # multi-scale


def test_stable_diffusion_strides_are_relative_to_the_image(teachers: dict[str, Teacher]) -> None:
    teacher = teachers["stable-diffusion"]
    assert teacher.latent_factor == 8
    assert teacher.image_size == (64, 64)
    assert teacher.feature_spec.strides == (16, 8, 8)  # 8x8 latents: up_blocks.0 at 4x4


@DIFFUSION_FAMILIES
def test_same_seed_same_features_other_seed_differs(teachers: dict[str, Teacher], family: str) -> None:
    teacher, x = teachers[family], images(family)
    a, b, c = teacher.features(x, seed=3), teacher.features(x, seed=3), teacher.features(x, seed=4)
    for k in a:
        assert torch.equal(a[k], b[k])
        assert not torch.allclose(a[k], c[k])


@DIFFUSION_FAMILIES
def test_per_image_seeds_make_features_independent_of_the_batch(teachers: dict[str, Teacher], family: str) -> None:
    teacher, x = teachers[family], images(family, n=3)
    full = teacher.features(x, seed=[10, 11, 12])
    alone = teacher.features(x[2:], seed=[12])
    for k in full:
        torch.testing.assert_close(full[k][2:], alone[k], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="seeds"):
        teacher.features(x, seed=[1, 2])


@DIFFUSION_FAMILIES
def test_concat_over_timesteps_sums_channels(
    model_dirs: dict[str, Path], teachers: dict[str, Teacher], family: str
) -> None:
    concat = teachers[family]
    split = create_teacher(family, model_dirs[family], timesteps=(50, 150), concat_timesteps=False)
    fc, fs = concat.features(images(family)), split.features(images(family))
    assert len(fs) == 2 * len(fc)
    for block in concat.blocks:
        a, b = fs[f"{block}@t=50"], fs[f"{block}@t=150"]
        torch.testing.assert_close(fc[f"{block}@t=50+150"], torch.cat([a, b], dim=1))
    assert split.feature_spec.total_channels == concat.feature_spec.total_channels
    # one timestep alone gives the same map as inside a multi-timestep call (shared noise draw)
    single = concat.features(images(family), timesteps=[50])
    for block in concat.blocks:
        torch.testing.assert_close(single[f"{block}@t=50"], fs[f"{block}@t=50"], atol=1e-5, rtol=1e-5)


@DIFFUSION_FAMILIES
def test_early_stop_and_batching_give_the_same_features(
    model_dirs: dict[str, Path], teachers: dict[str, Teacher], family: str
) -> None:
    fast = create_teacher(family, model_dirs[family], timesteps=(50, 150), blocks=["up_blocks.0", "mid_block"])
    slow = create_teacher(
        family, model_dirs[family], timesteps=(50, 150), blocks=["up_blocks.0", "mid_block"],
        early_stop=False, batch_timesteps=False,
    )
    calls = []
    fast.unet.conv_out.register_forward_hook(lambda *a: calls.append("fast"))
    slow.unet.conv_out.register_forward_hook(lambda *a: calls.append("slow"))
    a, b = fast.features(images(family), seed=1), slow.features(images(family), seed=1)
    assert calls == ["slow", "slow"]  # the early-stopped forward never reached the output conv
    assert list(a) == ["up_blocks.0@t=50+150", "mid_block@t=50+150"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


@DIFFUSION_FAMILIES
def test_noise_draws_average(teachers: dict[str, Teacher], family: str) -> None:
    teacher, x = teachers[family], images(family)
    one, two, again = (teacher.features(x, noise_draws=d) for d in (1, 2, 2))
    for k in one:
        assert one[k].shape == two[k].shape
        assert not torch.allclose(one[k], two[k])
        assert torch.equal(two[k], again[k])


# ---------------------------------------------------------------------------- sampling
@FAMILIES
def test_sample_shapes_and_per_index_determinism(teachers: dict[str, Teacher], family: str) -> None:
    teacher = teachers[family]
    size = SIZES[family]
    full = teacher.sample(4, seed=7, steps=2)
    halves = teacher.sample(4, seed=7, steps=2, batch_size=2)
    alone = teacher.sample(1, seed=10, steps=2)  # sample 3 of seed 7 uses seed 10
    assert full.images.shape == (4, 3, size, size)
    assert full.seeds == [7, 8, 9, 10]
    assert full.images.min() >= -1 and full.images.max() <= 1
    torch.testing.assert_close(full.images[3], halves.images[3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.images[3:], alone.images, atol=1e-4, rtol=1e-4)
    assert full.features is not None and alone.features is not None
    assert tuple(full.features) == teacher.feature_spec.names
    for k, f in full.features.items():
        torch.testing.assert_close(f[3:], alone.features[k], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full.images[0], full.images[1])
    assert teacher.sample(2, steps=1, return_features=False).features is None


@DIFFUSION_FAMILIES
@pytest.mark.parametrize("sampler", ["ddpm", "dpm"])
def test_other_samplers_are_deterministic(model_dirs: dict[str, Path], family: str, sampler: str) -> None:
    teacher = create_teacher(family, model_dirs[family], sampler=sampler)
    a = teacher.sample(2, seed=1, steps=2, return_features=False)
    b = teacher.sample(2, seed=1, steps=2, batch_size=1, return_features=False)
    torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=1e-4)


@DIFFUSION_FAMILIES
def test_capture_mode_features_match_spec(model_dirs: dict[str, Path], family: str) -> None:
    kwargs = {"prompt": "a cat", "guidance_scale": 2.0} if family == "stable-diffusion" else {}
    teacher = create_teacher(family, model_dirs[family], timesteps=(50, 900), sample_features="capture", **kwargs)
    out = teacher.sample(2, seed=0, steps=3)
    size = SIZES[family]
    assert out.features is not None
    for (name, channels, stride), f in zip(teacher.feature_spec, out.features.values()):
        assert tuple(f.shape) == (2, channels, size // stride, size // stride), name


# ---------------------------------------------------------------------------- loading
def test_load_pipeline_bare_unet_and_run_folders(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    pipe_dir = model_dirs["ddpm"]
    run = tmp_path / "run"
    shutil.copytree(pipe_dir, run / "teacher")
    (run / "config.yaml").write_text("teacher: tiny\n")
    (run / "run.json").write_text('{"command": "fit-teacher"}')  # a finished run (unfinished ones are refused)
    x = images("ddpm")
    loaded = {
        "pipeline": load_teacher(pipe_dir),
        "unet": load_teacher(pipe_dir / "unet"),
        "run": load_teacher(run),
        "explicit": load_teacher(run, family="ddpm"),
    }
    assert all(isinstance(t, DDPMTeacher) for t in loaded.values())
    assert loaded["run"].teacher_hash() == loaded["pipeline"].teacher_hash()
    assert loaded["pipeline"].scheduler_config["_class_name"] == "DDPMScheduler"
    ref = loaded["pipeline"].features(x)
    for t in loaded.values():
        for k, v in t.features(x).items():
            torch.testing.assert_close(v, ref[k])
    assert detect_family(model_dirs["stable-diffusion"]) == "stable-diffusion"
    assert isinstance(load_teacher(model_dirs["stable-diffusion"]), StableDiffusionTeacher)


def test_non_square_teacher(tmp_path: Path) -> None:
    teacher = load_teacher(build_tiny_ddpm(tmp_path / "wide", sample_size=(32, 48)), blocks=["up_blocks.0"])
    assert teacher.image_size == (32, 48)
    out = teacher.sample(1, steps=1)
    assert out.images.shape == (1, 3, 32, 48)
    assert out.features is not None and out.features["up_blocks.0@t=50"].shape == (1, 32, 16, 24)


def test_teacher_hash_is_stable_and_tracks_weights(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_ddpm(tmp_path / "other", seed=1)
    same = build_tiny_ddpm(tmp_path / "same", seed=0)
    h = load_teacher(model_dirs["ddpm"]).teacher_hash()
    assert len(h) == 16
    assert load_teacher(same).teacher_hash() == h
    assert load_teacher(other).teacher_hash() != h


def test_describe_is_json_and_recreates_the_teacher(teachers: dict[str, Teacher], model_dirs: dict[str, Path]) -> None:
    for family, teacher in teachers.items():
        desc = json.loads(json.dumps(teacher.describe()))
        assert desc["family"] == family
        again = create_teacher(desc["family"], model_dirs[family], **desc["kwargs"])
        assert again.feature_spec.to_dict() == desc["feature_spec"]


def test_teacher_stays_frozen(teachers: dict[str, Teacher]) -> None:
    teacher = teachers["ddpm"]
    teacher.train()
    assert not teacher.training and not teacher.unet.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_tiny_models_are_small(model_dirs: dict[str, Path]) -> None:
    for path in model_dirs.values():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        assert size < 2 * 2**20, path
    tok = model_dirs["stable-diffusion"] / "tokenizer"
    assert (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()


def test_register_teacher() -> None:
    @register_teacher("test-ddpm")
    class TestTeacher(DDPMTeacher):
        family = "test-ddpm"

    try:
        assert TEACHERS["test-ddpm"] is TestTeacher
        with pytest.raises(ValueError, match="already registered"):
            register_teacher("test-ddpm")(DDPMTeacher)
    finally:
        TEACHERS.unregister("test-ddpm")
    assert "test-ddpm" not in TEACHERS and DDPMTeacher.family == "ddpm"


# ---------------------------------------------------------------------------- errors
def one_line(exc: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(exc.value)


def test_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"teacher folder not found: .*nope; pass --teacher") as exc:
        load_teacher(tmp_path / "nope")
    assert one_line(exc)
    with pytest.raises(ModelError, match="teacher folder not found"):
        load_teacher(tmp_path / "nope", family="ddpm")


def test_non_diffusers_folder_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError, match=r"no diffusers teacher model in .*looked for model_index.json") as exc:
        load_teacher(tmp_path)
    assert one_line(exc)
    with pytest.raises(ModelError, match="no DDPM model"):
        load_teacher(tmp_path, family="ddpm")


def test_wrong_family_and_broken_folder(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not UNet2DModel"):
        load_teacher(model_dirs["stable-diffusion"], family="ddpm")
    with pytest.raises(ModelError, match="no Stable Diffusion model"):
        load_teacher(model_dirs["ddpm"], family="stable-diffusion")
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs["ddpm"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match=r"cannot load UNet2DModel from .*unet") as exc:
        load_teacher(broken)
    assert one_line(exc)


def test_config_errors(model_dirs: dict[str, Path], teachers: dict[str, Teacher]) -> None:
    path = model_dirs["ddpm"]
    with pytest.raises(ConfigError, match=r"unknown teacher family 'ddmp'.*did you mean: ddpm"):
        load_teacher(path, family="ddmp")
    with pytest.raises(ConfigError, match=r"unknown teacher block 'up_block.1'.*did you mean: up_blocks.1"):
        load_teacher(path, blocks=["up_block.1"])
    with pytest.raises(ConfigError, match=r"timesteps \[1000\] out of range"):
        load_teacher(path, timesteps=[1000])
    with pytest.raises(ConfigError, match="unknown sampler"):
        load_teacher(path, sampler="euler")
    with pytest.raises(ConfigError, match="sample_features"):
        load_teacher(path, sample_features="both")
    with pytest.raises(ConfigError, match=r"images are 48x48 .* trained at 32x32; resize"):
        teachers["ddpm"].features(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ConfigError, match=r"multiples of 32; pad or resize to 96x64"):
        teachers["stable-diffusion"].features(torch.zeros(1, 3, 80, 64))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        teachers["ddpm"].features(torch.full((1, 3, 32, 32), 255.0))


def test_allow_any_size(model_dirs: dict[str, Path]) -> None:
    teacher = load_teacher(model_dirs["ddpm"], allow_any_size=True, blocks=["up_blocks.1"])
    feats = teacher.features(torch.zeros(1, 3, 48, 64))
    assert feats["up_blocks.1@t=50"].shape == (1, 32, 48, 64)
    with pytest.raises(ConfigError, match=r"multiples of 4; pad or resize to 52x64"):
        teacher.features(torch.zeros(1, 3, 50, 64))


# ---------------------------------------------------------------------------- registry contract
def check_teacher_contract(teacher: Teacher, path: Path, family: str, size: tuple[int, int]) -> None:
    """What every family promises, whatever it is (diffusion or not)."""
    assert isinstance(teacher, Teacher) and type(teacher).family == family and TEACHERS.get(family) is type(teacher)
    assert TEACHERS[family].matches(path) and detect_family(path) == family
    x = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    spec = teacher.feature_spec
    feats = teacher.features(x, seed=[1, 2])
    assert tuple(feats) == spec.names and spec == teacher.spec_for()
    for (name, channels, stride), f in zip(spec, feats.values()):
        assert f.dtype == torch.float32 and torch.isfinite(f).all(), name
        assert tuple(f.shape) == (2, channels, size[0] // stride, size[1] // stride), name
    again = teacher.features(x, seed=[1, 2])
    assert all(torch.equal(feats[k], again[k]) for k in feats)  # same seeds, same features
    desc = teacher.describe()
    assert json.loads(json.dumps(desc)) == desc and teacher.describe() == desc
    assert desc["family"] == family and desc["feature_spec"] == spec.to_dict()
    assert desc["teacher_hash"] == teacher.teacher_hash() == hash_model_folder(teacher.root)
    assert create_teacher(family, path, **desc["kwargs"]).describe() == desc  # kwargs recreate it
    if teacher.can_sample:
        out = teacher.sample(2, seed=0, steps=1, return_features=False)
        assert isinstance(out, SampleOutput) and out.images.shape == (2, 3, *teacher.image_size)
        assert out.seeds == [0, 1] and out.features is None
    else:
        with pytest.raises(ConfigError, match="cannot sample"):
            teacher.sample(2)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@FAMILIES
def test_every_family_keeps_the_teacher_contract(
    teachers: dict[str, Teacher], model_dirs: dict[str, Path], family: str
) -> None:
    size = (SIZES[family], SIZES[family])
    check_teacher_contract(teachers[family], model_dirs[family], family, size)


def test_diffusion_families_differ_only_where_they_say() -> None:
    assert set(TEACHERS.names()) - set(DIFFUSION) == {"gan"}
    assert GanTeacher.can_sample and not issubclass(GanTeacher, DiffusionTeacher)
    for family in DIFFUSION:
        cls = TEACHERS[family]
        assert issubclass(cls, DiffusionTeacher) and cls.can_sample
        assert set(cls.options()) >= {"blocks", "timesteps", "amp", "sampler"}
    assert set(DDPMTeacher.options()) - set(DiffusionTeacher.options()) == {"allow_any_size"}
    assert set(StableDiffusionTeacher.options()) - set(DiffusionTeacher.options()) == {"prompt", "guidance_scale"}


def test_detection_asks_stable_diffusion_before_ddpm() -> None:
    order = detection_order()
    assert sorted(order) == TEACHERS.names()
    assert order.index("stable-diffusion") < order.index("ddpm")


# ---------------------------------------------------------------------------- a plug-in family
class PoolTeacher(Teacher):
    """A toy non-diffusion family: average pools of the image (no weights, cannot sample)."""

    folder_hint = "config.json with _class_name PoolTeacher"

    def __init__(self, path: str | Path, *, strides: Sequence[int] = (2, 4), gain: float = 1.0) -> None:
        super().__init__(path)
        self.strides = tuple(int(s) for s in strides)
        self.kwargs.update(strides=list(self.strides), gain=float(gain))
        self.register_buffer("gain", torch.tensor(float(gain)))

    @classmethod
    def matches(cls, root: Path) -> bool:
        cfg = root / "config.json"
        return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "PoolTeacher"

    @property
    def image_size(self) -> tuple[int, int]:
        return (16, 16)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(tuple(f"pool{s}" for s in self.strides), (3,) * len(self.strides), self.strides)

    def check_image_size(self, height: int, width: int) -> None:
        m = max(self.strides)
        if height % m or width % m:
            raise ConfigError(f"images are {height}x{width}; the pool teacher needs multiples of {m}")

    def features(self, images: torch.Tensor, seed: int | Sequence[int] = 0) -> dict[str, torch.Tensor]:
        x = self._check_images(images)
        return {f"pool{s}": F.avg_pool2d(x, s) * self.gain for s in self.strides}


@pytest.fixture
def pool_family(tmp_path: Path) -> Iterator[Path]:
    """``PoolTeacher`` registered as ``toy-pool`` for one test, and a folder it recognises."""
    register_teacher("toy-pool")(PoolTeacher)
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "PoolTeacher"}))
    try:
        yield folder
    finally:
        TEACHERS.unregister("toy-pool")


def test_a_plug_in_family_is_created_detected_and_described_by_name(pool_family: Path) -> None:
    assert "toy-pool" in TEACHERS and PoolTeacher.family == "toy-pool"
    assert PoolTeacher.options() == ("strides", "gain")
    check_teacher_contract(create_teacher("toy-pool", pool_family), pool_family, "toy-pool", (16, 16))
    detected = load_teacher(pool_family, strides=[4])
    assert isinstance(detected, PoolTeacher) and detected.feature_spec.names == ("pool4",)
    # a shared teacher config section: keys of other families (timesteps, prompt) are not passed
    cfg = {"family": "auto", "strides": [2], "gain": 2.0, "timesteps": [50], "prompt": "", "blocks": None}
    configured = teacher_from_config(pool_family, cfg)
    assert configured.kwargs == {"strides": [2], "gain": 2.0}
    with pytest.raises(ConfigError, match="takes no feature options"):
        configured.spec_for(timesteps=[50])
    # heads size themselves from any family's spec
    head = create_head("interpreter", configured.feature_spec, 3, width=4, norm_groups=2)
    probs, _ = head.predict(configured.features(torch.zeros(1, 3, 16, 16)))
    assert probs.shape == (1, 3, 16, 16)


def test_a_duplicate_family_name_is_refused(pool_family: Path) -> None:
    with pytest.raises(ValueError, match="'toy-pool' is already registered to PoolTeacher"):
        register_teacher("toy-pool")(DDPMTeacher)
    with pytest.raises(ValueError, match="already registered"):
        register_teacher("ddpm")(PoolTeacher)
    assert TEACHERS["ddpm"] is DDPMTeacher and TEACHERS["toy-pool"] is PoolTeacher
    register_teacher("toy-pool")(PoolTeacher)  # the same class again is a no-op


def test_unknown_family_names_the_registered_ones(pool_family: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown teacher family 'toy-pol' \(did you mean: toy-pool\?\); available: "
                                          r"ddpm, gan, stable-diffusion, toy-pool, auto"):
        create_teacher("toy-pol", pool_family)
    TEACHERS.unregister("toy-pool")
    try:
        with pytest.raises(ConfigError, match="unknown teacher family 'toy-pool'"):
            load_teacher(pool_family, family="toy-pool")
        with pytest.raises(ModelError, match="no diffusers teacher model"):
            load_teacher(pool_family)  # no registered family recognises the folder any more
    finally:
        register_teacher("toy-pool")(PoolTeacher)  # the fixture unregisters it


@pytest.mark.parametrize("family, emptied", [("stable-diffusion", "tokenizer"), ("stable-diffusion", "text_encoder"),
                                             ("ddpm", "unet")])
def test_an_incomplete_model_folder_names_its_missing_files(model_dirs: dict[str, Path], tmp_path: Path, family: str,
                                                            emptied: str, cli) -> None:  # noqa: ANN001
    """A component folder left empty (an interrupted download) is one line naming what is missing,
    at load time, for the library and for a command."""
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dirs[family], broken)
    shutil.rmtree(broken / emptied)
    (broken / emptied).mkdir()
    with pytest.raises(ModelError, match=rf"incomplete: missing {emptied}/") as exc:
        load_teacher(broken)
    assert one_line(exc)
    code, _, err = cli("train-head", "--preset", "tiny", "-q", "--labels", "4", "--teacher", broken,
                       "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and f"missing {emptied}/" in err


def test_loading_a_scheduler_does_not_warn_about_weights(model_dirs: dict[str, Path],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A scheduler folder holds only scheduler_config.json: no "no safetensors weights" warning."""
    import logging

    from diffusers import DDIMScheduler

    from dtlabel.teachers.loading import load_component

    with caplog.at_level(logging.WARNING):
        sched = load_component(DDIMScheduler, model_dirs["ddpm"], "scheduler")
    assert sched.config.num_train_timesteps > 0
    assert not [r for r in caplog.records if "safetensors" in r.getMessage()]


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_every_sampler_clips_x0_as_the_teachers_schedule_says(sampler: str) -> None:
    """A pixel-space DDPM's schedule clips x0 predictions to [-1, 1] (``clip_sample``); DPM-Solver++ has no
    such option and must clamp the same way (its thresholding), or its samples drift from the data.
    A zero noise prediction makes x0 = x / sqrt(alpha_bar): far outside [-1, 1] early on."""
    from diffusers import DDPMScheduler

    from dtlabel.teachers.sampling import denoise, make_sampler

    samplers = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    out = {}
    for clip in (True, False):  # False: a latent-space model's schedule, never clipped
        config = dict(DDPMScheduler(clip_sample=clip).config)
        scheduler = make_sampler(samplers, sampler, config)
        out[clip], _ = denoise(predict, scheduler, [0, 1], (3, 8, 8), 10, torch.device("cpu"))
    assert out[True].abs().max() <= 1 + 1e-5
    assert out[False].abs().max() > 2
