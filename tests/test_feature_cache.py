"""Tests of dtlabel.teachers.cache: hits, misses, key sensitivity, fp16 round trip, atomic writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from dtlabel.errors import ConfigError
from dtlabel.features import FeatureSpec
from dtlabel.teachers import Teacher, load_teacher
from dtlabel.teachers.cache import CacheKey, FeatureCache, feature_settings, image_hash
from dtlabel.teachers.tiny import build_tiny_ddpm


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Teacher:
    path = build_tiny_ddpm(tmp_path_factory.mktemp("cache") / "ddpm")
    return load_teacher(path, timesteps=(50, 150), blocks=["up_blocks.0", "up_blocks.1"])


def batch(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def feats(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a@t=50": torch.randn((8, 4, 4), generator=g) * 3, "b@t=50": torch.randn((4, 8, 8), generator=g)}


def key(**over: object) -> CacheKey:
    fields = {"image_hash": "img", "teacher_hash": "teach", "settings": "{}", "seed": 0, "draw": 0}
    fields.update(over)
    return CacheKey(**fields)  # type: ignore[arg-type]


def test_miss_then_hit_with_fp16_round_trip(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    k, f = key(), feats()
    assert cache.get(k) is None and k not in cache and len(cache) == 0
    cache.put(k, f)
    got = cache.get(k)
    assert got is not None and list(got) == list(f) and k in cache and len(cache) == 1
    for name in f:
        assert got[name].dtype == torch.float32 and got[name].shape == f[name].shape
        torch.testing.assert_close(got[name], f[name], atol=1e-2, rtol=1e-3)  # fp16 precision
        assert torch.equal(got[name], f[name].half().float())


def test_entries_are_fp16_memory_maps(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(key(), feats())
    files = sorted(cache.path(key()).glob("*.npy"))
    assert len(files) == 2 and all(np.load(p).dtype == np.float16 for p in files)
    raw = cache.get(key(), dtype=None)
    assert raw is not None and all(v.dtype == torch.float16 for v in raw.values())


@pytest.mark.parametrize(
    "change", [{"teacher_hash": "other"}, {"settings": '{"t": 150}'}, {"image_hash": "x"}, {"seed": 1}, {"draw": 1}]
)
def test_any_key_field_change_is_a_miss(tmp_path: Path, change: dict) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(key(), feats())
    assert cache.get(key(**change)) is None


def test_settings_track_timesteps_blocks_and_draws(teacher: Teacher) -> None:
    base = feature_settings(teacher)
    assert feature_settings(teacher) == base
    assert feature_settings(teacher, timesteps=[50]) != base
    assert feature_settings(teacher, noise_draws=2) != base
    x = batch(1)[0]
    assert image_hash(x) == image_hash(x.clone()) != image_hash(x + 0.01)


def test_put_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)
    real_save = np.save
    calls = []

    def failing_save(file: object, arr: np.ndarray) -> None:
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(file, arr)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key(), feats())
    assert cache.get(key()) is None and len(cache) == 0
    assert Path(calls[0]).parent.name.startswith(".tmp-")  # written under a hidden temporary name
    assert not list(tmp_path.rglob(".tmp-*"))  # and cleaned up
    monkeypatch.setattr(np, "save", real_save)
    cache.put(key(), feats())
    assert cache.get(key()) is not None


def test_concurrent_writer_keeps_the_first_entry(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(key(), feats(0))
    cache.put(key(), feats(1))  # the target exists: keep it, drop ours
    got = cache.get(key())
    assert got is not None and torch.equal(got["a@t=50"], feats(0)["a@t=50"].half().float())
    assert not list(tmp_path.rglob(".tmp-*"))


def test_values_beyond_fp16_are_clamped(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    cache.put(key(), {"a": torch.tensor([1e6, -1e6, 1.0])})
    got = cache.get(key())
    assert got is not None and torch.isfinite(got["a"]).all()


def test_cached_features_match_the_teacher_and_hit_the_second_time(
    teacher: Teacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path)
    x, seeds = batch(3), [5, 6, 7]
    first = cache.features(teacher, x, seeds)
    direct = teacher.features(x, seed=seeds)
    assert list(first) == list(teacher.feature_spec.names)
    for k in first:
        torch.testing.assert_close(first[k], direct[k], atol=2e-3, rtol=2e-3)
    assert len(cache) == 3

    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache miss")

    monkeypatch.setattr(teacher, "features", no_compute)
    second = cache.features(teacher, x, seeds)
    for k in first:
        assert torch.equal(first[k], second[k])
    # a partly cached batch only computes the new images
    monkeypatch.undo()
    mixed = cache.features(teacher, torch.cat([x[:1], batch(1, seed=9)]), [5, 8])
    assert len(cache) == 4
    torch.testing.assert_close(mixed[teacher.feature_spec.names[0]][0], first[teacher.feature_spec.names[0]][0])
    # other timesteps are a different entry
    cache.features(teacher, x[:1], [5], timesteps=[50])
    assert len(cache) == 5


class _ScaleTeacher(Teacher):
    """A toy teacher without diffusion options: the image and its 2x average pool, times a weight."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.weight = torch.nn.Parameter(torch.tensor(1.5), requires_grad=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return (32, 32)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(("full", "half"), (3, 3), (1, 2))

    def check_image_size(self, height: int, width: int) -> None:
        pass

    def features(self, images: torch.Tensor, seed: int | Sequence[int] = 0) -> dict[str, torch.Tensor]:
        x = self._check_images(images) * self.weight
        return {"full": x, "half": torch.nn.functional.avg_pool2d(x, 2)}


def test_a_teacher_without_reading_options_is_cached(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    toy = _ScaleTeacher(tmp_path / "model")
    settings = json.loads(feature_settings(toy))
    assert settings["names"] == ["full", "half"] and settings["noise_draws"] == 1
    cache = FeatureCache(tmp_path / "cache")
    x = batch(2)
    first = cache.features(toy, x, [0, 1])
    assert len(cache) == 2 and first["half"].shape == (2, 3, 16, 16)
    torch.testing.assert_close(first["full"], x * 1.5, atol=1e-2, rtol=1e-3)
    second = cache.features(toy, x, [0, 1])
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ConfigError, match="takes no feature options"):
        cache.features(toy, x, [0, 1], timesteps=[50])
