"""synthesize: shards + manifest, real-image mode, resume after SIGKILL, determinism, torchrun, reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from dtlabel.cli import main

TINY = ("synthesize", "--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random 16 px DDPM and a random interpreter head (4 classes) saved for it."""
    import torch

    from dtlabel.heads import create_head
    from dtlabel.teachers import load_teacher
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("models")
    teacher_dir = build_tiny_ddpm(root / "ddpm", sample_size=16)
    teacher = load_teacher(teacher_dir, timesteps=(50,))
    torch.manual_seed(0)
    head = create_head("interpreter", teacher.feature_spec, 4, width=8, norm_groups=4)
    head.save(root / "head_run" / "head", teacher_hash=teacher.teacher_hash(), class_names=["bg", "a", "b", "c"],
              teacher=teacher.describe())
    (root / "head_run" / "run.json").write_text(json.dumps({"command": "train-head"}))
    return teacher_dir, root / "head_run"


def _args(models: tuple[Path, Path], *extra: str) -> list[str]:
    return [*TINY, "--teacher", str(models[0]), "--head", str(models[1]), *extra]


def _decoded(run: Path) -> dict[int, dict]:
    from dtlabel.synth import SynthSet

    return {s["index"]: s for s in SynthSet(run).iter()}


def _same(a: dict[int, dict], b: dict[int, dict]) -> None:
    assert sorted(a) == sorted(b)
    for i in a:
        for k in ("image", "label"):
            assert np.array_equal(a[i][k], b[i][k]), (i, k)
        # float maps: another batch size or process may move a value by one step of its encoding
        assert np.abs(a[i]["uncertainty"] - b[i]["uncertainty"]).max() <= 1 / 255 + 1e-6, i
        la, lb = a[i]["logits"].astype(np.float32), b[i]["logits"].astype(np.float32)
        assert np.abs(la - lb).max() <= 4e-3 and (la == lb).mean() > 0.95, i
        assert a[i]["seed"] == b[i]["seed"] == i and abs(a[i]["score"] - b[i]["score"]) <= 1 / 255


@pytest.fixture(scope="module")
def sampled(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "sampled"
    assert main(_args(models, "--n", "24", "--out", str(out))) == 0
    return out


def test_tiny_preset_writes_24_samples_in_shards_and_a_manifest(sampled: Path) -> None:
    m = json.loads((sampled / "manifest.json").read_text())
    desc = json.loads((sampled / "run.json").read_text())
    assert desc["command"] == "synthesize" and desc["count"] == 24 and desc["mode"] == "sample"
    assert m["count"] == 24 and m["num_classes"] == 4 and m["class_names"] == ["bg", "a", "b", "c"]
    assert m["size"] == [16, 16] and m["logits_size"] == [8, 8] and len(m["scores"]) == 24
    assert [(s["first"], s["last"], s["count"]) for s in m["shards"]] == [(0, 7, 8), (8, 15, 8), (16, 23, 8)]
    assert sum(m["class_pixels"]) == 24 * 16 * 16
    assert m["teacher"]["hash"] == desc["teacher_hash"] and len(m["head"]["hash"]) == 16
    assert set(m["score"]["quantiles"]) == {"0", "0.1", "0.25", "0.5", "0.75", "0.9", "1"}
    assert (sampled / "preview.png").is_file() and not list(sampled.rglob(".*tmp"))
    # plain tar, webdataset layout
    with tarfile.open(sampled / m["shards"][1]["name"]) as tar:
        names = tar.getnames()
    assert names[:5] == ["00000008.png", "00000008.label.png", "00000008.uncert.png", "00000008.logits.npy",
                         "00000008.json"]
    assert len(names) == 8 * 5


def test_reader_decodes_every_sample(sampled: Path) -> None:
    from dtlabel.synth import SynthSet

    ds = SynthSet(sampled)
    assert len(ds) == 24 and ds.indices == list(range(24)) and ds.size == (16, 16) and ds.logits_size == (8, 8)
    samples = list(ds.iter())
    assert [s["index"] for s in samples] == list(range(24))
    s = samples[5]
    assert s["key"] == "00000005" and s["seed"] == 5 and s["source"] == "sample"
    assert s["image"].shape == (16, 16, 3) and s["image"].dtype == np.uint8
    assert s["label"].shape == (16, 16) and s["label"].max() < 4
    assert s["uncertainty"].dtype == np.float32 and 0 <= s["uncertainty"].min() <= s["uncertainty"].max() <= 1
    assert s["logits"].shape == (4, 8, 8) and s["logits"].dtype == np.float16
    probs = np.exp(s["logits"].astype(np.float32)).sum(0)
    assert np.allclose(probs, 1, atol=1e-2)
    assert s["score"] == ds.manifest["scores"][5]


def test_reader_first_n_is_the_start_of_the_set(sampled: Path) -> None:
    from dtlabel.errors import DataError
    from dtlabel.synth import SynthSet

    whole = {s["index"]: s for s in SynthSet(sampled).iter()}
    ds = SynthSet(sampled, first=10, drop_uncertain=0.2)
    kept = sorted(range(10), key=lambda i: (-whole[i]["score"], -i))[2:]  # the 2 most uncertain of the 10 dropped
    assert len(ds) == 8 and ds.indices == sorted(kept) and ds.dropped_uncertain == 2
    got = list(ds.iter(shuffle_buffer=4, seed=1))
    assert sorted(s["index"] for s in got) == sorted(kept)
    assert all(np.array_equal(s["image"], whole[s["index"]]["image"]) for s in got)
    with pytest.raises(DataError, match="the first 25 samples were asked for, but the run made 24"):
        SynthSet(sampled, first=25)


def _image_folder(root: Path, n: int = 7, corrupt: bool = False) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        arr = (rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)
        folder = root / "sub" if i % 2 else root
        Image.fromarray(arr).save(folder / f"img{i}.{'jpg' if i % 3 == 0 else 'png'}")
    if corrupt:
        (root / "img3b.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("ignored")
    return root


def test_images_mode_one_sample_per_image(models: tuple[Path, Path], tmp_path: Path) -> None:
    from dtlabel.synth import SynthSet

    folder = _image_folder(tmp_path / "imgs")
    out = tmp_path / "real"
    assert main(_args(models, "--images", str(folder), "synth.samples_per_shard=3", "--out", str(out))) == 0
    ds = SynthSet(out)
    m = ds.manifest
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    assert m["mode"] == "image" and m["count"] == len(ds) == 7 and len(m["shards"]) == 3
    assert [f["file"] for f in m["source"]["files"]] == files and m["source"]["folder"] == str(folder)
    assert all(len(f["sha256"]) == 64 for f in m["source"]["files"])
    samples = list(ds.iter())
    assert [s["file"] for s in samples] == files and {s["source"] for s in samples} == {"image"}
    assert all(s["image"].shape == (32, 32, 3) and s["seed"] == s["index"] for s in samples)  # data.size: what students train at
    # --n takes the first N files of the sorted list; resized to synth.size
    out2 = tmp_path / "real2"
    assert main(_args(models, "--images", str(folder), "--n", "2", "synth.size=[24,24]", "--out", str(out2))) == 0
    s2 = list(SynthSet(out2).iter())
    assert [s["file"] for s in s2] == files[:2] and s2[0]["label"].shape == (24, 24)


def test_images_mode_corrupt_file_error_or_skip(models: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from dtlabel.synth import SynthSet

    folder = _image_folder(tmp_path / "imgs", n=5, corrupt=True)
    code = main(_args(models, "--images", str(folder), "--out", str(tmp_path / "a")))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "img3b.png" in err and "synth.skip_corrupt=true" in err
    out = tmp_path / "b"
    assert main(_args(models, "--images", str(folder), "synth.skip_corrupt=true", "--out", str(out))) == 0
    ds = SynthSet(out)
    m = ds.manifest
    assert m["n"] == 6 and m["count"] == len(ds) == 5 and [s["file"] for s in m["skipped"]] == ["img3b.png"]
    bad = m["skipped"][0]["index"]
    assert m["scores"][bad] is None and bad not in ds.indices and len(ds.indices) == 5


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("dtlabel: error: ")
    return err


def test_input_errors(models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, h = str(models[0]), str(models[1])
    runs = iter(range(100))

    def err(*args: str) -> str:
        return _error(capsys, [*TINY, *args, "--out", str(tmp_path / "runs" / str(next(runs)))])

    assert "needs --teacher DIR" in err("--n", "4", "--head", h)
    assert "needs a labeler: --head HEAD_RUN" in err("--n", "4", "--teacher", t)
    assert "--n 0: must be >= 1" in err("--n", "0", "--teacher", t, "--head", h)
    assert "teacher folder not found" in err("--n", "4", "--teacher", str(tmp_path / "none"), "--head", h)
    assert "folder not found" in err("--n", "4", "--teacher", t, "--head", str(tmp_path / "none"))
    assert "synth.samples_per_shard=0 must be >= 1" in err("--n", "4", "--teacher", t, "--head", h,
                                                           "synth.samples_per_shard=0")
    assert "synth.image_format=gif" in err("--n", "4", "--teacher", t, "--head", h, "synth.image_format=gif")
    assert "synth.pool_images=0 must be >= 1 or null" in err("--teacher", t, "--head", h, "synth.pool_images=0")
    assert "--images" in err("--images", str(tmp_path / "none"), "--teacher", t, "--head", h)
    (tmp_path / "empty").mkdir()
    assert "no images" in err("--images", str(tmp_path / "empty"), "--teacher", t, "--head", h)
    _image_folder(tmp_path / "two", n=2)
    assert "holds only 2 images" in err("--images", str(tmp_path / "two"), "--n", "3", "--teacher", t, "--head", h)


def test_head_of_another_teacher_is_refused(models: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    other = build_tiny_ddpm(tmp_path / "other", sample_size=16, seed=1)
    e = _error(capsys, [*TINY, "--n", "2", "--teacher", str(other), "--head", str(models[1]), "--out",
                        str(tmp_path / "r")])
    assert "was trained on teacher" in e


def _kill_after_shards(cmd: list[str], env: dict[str, str], out: Path, shards: int) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``shards`` committed shards exist in ``out``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.tar"))) < shards:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _shard_indices(out: Path, manifest: dict) -> list[int]:
    """Sample indices of every shard of the manifest, shard by shard, as the tar files hold them."""
    seen: list[int] = []
    for sh in manifest["shards"]:
        with tarfile.open(out / sh["name"]) as tar:
            seen += sorted({int(n.split(".")[0]) for n in tar.getnames()})
    return seen


def test_sigkill_then_resume_ends_with_exactly_n(models: tuple[Path, Path], sampled: Path, tmp_path: Path) -> None:
    """Killed mid-run, the same command with --resume ends with all 24 indices once; a shard whose bytes
    no longer match its sidecar hash is written again; samples equal the uninterrupted run's."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dtlabel.cli", *_args(models, "--n", "24", "synth.samples_per_shard=3",
                                                        "synth.batch_size=2", "--out", str(out))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _kill_after_shards(cmd, env, out, 2)
    assert not (out / "run.json").exists(), "the run finished before it could be killed"
    done_before = sorted((out / "shards").glob("*.tar"))
    assert 2 <= len(done_before) < 8
    with open(done_before[0], "r+b") as f:  # a damaged committed shard must not be accepted
        f.truncate(100)
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["count"] == 24 and len(m["shards"]) == 8 and all(s["count"] == 3 for s in m["shards"])
    assert not list(out.rglob(".*tmp"))
    seen = _shard_indices(out, m)
    assert seen == list(range(24))
    _same(_decoded(out), _decoded(sampled))  # other shard and batch sizes, a restart: same samples


def test_dpm_solver_gives_the_same_bytes_twice_and_after_a_kill(models: tuple[Path, Path], tmp_path: Path) -> None:
    """The fast sampler (DPM-Solver++ multistep, few steps): two runs write the same shard bytes (the
    second encoding with three threads), and a killed one resumed with --resume ends with them too."""
    from dtlabel.cli import main

    args = _args(models, "--n", "12", "teacher.sampler=dpm", "synth.sample_steps=3", "synth.samples_per_shard=3",
                 "synth.batch_size=2")
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "killed"]
    assert main([*args, "--out", str(runs[0])]) == 0
    assert main([*args, "synth.encode_workers=3", "--out", str(runs[1])]) == 0
    cmd = [sys.executable, "-m", "dtlabel.cli", *args, "--out", str(runs[2])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _kill_after_shards(cmd, env, runs[2], 1)
    assert not (runs[2] / "run.json").exists(), "the run finished before it could be killed"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shards = [{p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))} for out in runs]
    assert len(shards[0]) == 4 and shards[0] == shards[1] == shards[2]
    assert json.loads((runs[0] / "manifest.json").read_text())["sampler"] == "dpm"


def test_images_mode_sigkill_then_resume_one_sample_per_image(models: tuple[Path, Path], tmp_path: Path) -> None:
    """--images, killed mid-run: the same command with --resume ends with exactly one sample per image,
    each index once, equal to an uninterrupted run's."""
    folder = _image_folder(tmp_path / "imgs", n=48)
    out, ref = tmp_path / "killed", tmp_path / "ref"
    extra = ("--images", str(folder), "synth.samples_per_shard=2", "synth.batch_size=1", "synth.size=[64,64]")
    cmd = [sys.executable, "-m", "dtlabel.cli", *_args(models, *extra, "--out", str(out))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _kill_after_shards(cmd, env, out, 2)
    assert not (out / "run.json").exists(), "the run finished before it could be killed"
    assert 2 <= len(list((out / "shards").glob("*.tar"))) < 24
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["mode"] == "image" and m["count"] == 48 and len(m["shards"]) == 24
    seen = _shard_indices(out, m)
    assert seen == list(range(48))
    assert main(_args(models, *extra, "synth.samples_per_shard=5", "synth.batch_size=3", "--out", str(ref))) == 0
    killed, whole = _decoded(out), _decoded(ref)
    _same(killed, whole)
    assert [killed[i]["file"] for i in range(48)] == [whole[i]["file"] for i in range(48)]


def test_determinism_across_shard_and_batch_sizes(models: tuple[Path, Path], sampled: Path, tmp_path: Path) -> None:
    out = tmp_path / "other_sizes"
    assert main(_args(models, "--n", "10", "synth.samples_per_shard=5", "synth.batch_size=1", "synth.preview=0",
                      "--out", str(out))) == 0
    a, b = _decoded(out), _decoded(sampled)
    _same(a, {i: b[i] for i in range(10)})


def test_torchrun_two_processes_gloo(models: tuple[Path, Path], sampled: Path, tmp_path: Path) -> None:
    """2 ranks split the shards (rank r writes shards j % 2 == r); one manifest; same samples as 1 rank.
    (torchrun's own parser takes ``--n`` for an abbreviation of its options: ``--num-samples``.)"""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "dtlabel.cli", *_args(models, "--num-samples", "24", "synth.samples_per_shard=5", "--device", "cpu",
                                      "--out", str(out))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    desc = json.loads((out / "run.json").read_text())
    m = json.loads((out / "manifest.json").read_text())
    assert desc["world_size"] == m["world_size"] == 2 and m["count"] == 24 and len(m["shards"]) == 5
    assert [s["count"] for s in m["shards"]] == [5, 5, 5, 5, 4]
    assert len(list(out.glob("*.log"))) == 1 and not list(out.rglob(".*tmp"))
    _same(_decoded(out), _decoded(sampled))


def test_two_nodes_on_localhost_write_the_samples_of_one_process(models: tuple[Path, Path], sampled: Path,
                                                                  tmp_path: Path) -> None:
    """torchrun --nnodes 2 (one process per node, as on two machines sharing the run folder): the
    same samples and one manifest as a single process."""
    from conftest import torchrun_two_nodes

    out = tmp_path / "nodes"
    torchrun_two_nodes(_args(models, "--num-samples", "24", "synth.samples_per_shard=5", "--device", "cpu",
                             "--out", str(out)), port=29561)
    m = json.loads((out / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["count"] == 24 and len(m["shards"]) == 5
    _same(_decoded(out), _decoded(sampled))


def test_drop_uncertain_and_iterable_dataset(sampled: Path) -> None:
    import torch

    from dtlabel.synth import SynthIterableDataset, SynthSet

    full = SynthSet(sampled)
    ds = SynthSet(sampled, drop_uncertain=0.25)
    scores = full.manifest["scores"]
    assert len(ds) == 18
    dropped = sorted(set(range(24)) - set(ds.indices))
    assert min(scores[i] for i in dropped) >= max(scores[i] for i in ds.indices)
    assert sorted(s["index"] for s in ds.iter(shuffle_buffer=4, seed=1)) == ds.indices
    order = [s["index"] for s in ds.iter(shuffle_buffer=4, seed=1)]
    assert order != ds.indices and order == [s["index"] for s in ds.iter(shuffle_buffer=4, seed=1)]
    # consumers (ranks x workers) see disjoint parts that cover everything: 3 shards over 2 and over 5
    for world in (2, 5):
        parts = [[s["index"] for s in ds.iter(rank=r, world=world)] for r in range(world)]
        assert sorted(i for p in parts for i in p) == ds.indices
    it = SynthIterableDataset(ds, transform=lambda s: {"index": s["index"], "label": torch.from_numpy(s["label"])},
                              shuffle_buffer=8, seed=0)
    loader = torch.utils.data.DataLoader(it, batch_size=4, num_workers=2)
    got = [int(i) for b in loader for i in b["index"]]
    assert sorted(got) == ds.indices
    it.set_epoch(1)
    assert sorted(int(i) for b in loader for i in b["index"]) == ds.indices


def test_reader_errors(sampled: Path, tmp_path: Path) -> None:
    from dtlabel.errors import ConfigError, DataError, RunError
    from dtlabel.synth import SynthSet

    with pytest.raises(RunError, match="folder not found"):
        SynthSet(tmp_path / "none")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(RunError, match="not a finished synthesize run"):
        SynthSet(tmp_path / "unfinished")
    with pytest.raises(ConfigError, match="drop_uncertain=1.0"):
        SynthSet(sampled, drop_uncertain=1.0)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sampled, copy)
    (copy / "shards" / "shard-000001.tar").unlink()
    with pytest.raises(DataError, match="shard shards/shard-000001.tar listed in manifest.json is missing"):
        SynthSet(copy)


def test_data_check_understands_a_synth_run(sampled: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    import shutil

    code, out, err = cli("data", "check", "-q", f"data.root={sampled}", "--out", tmp_path / "c1")
    assert code == 0, err
    assert "24 samples (sample), 3 shards" in out and "problems: 0" in out
    summary = json.loads((tmp_path / "c1" / "summary.json").read_text())
    assert summary["count"] == 24 and abs(sum(summary["pixel_share"]) - 1) < 1e-4
    copy = tmp_path / "copy"
    shutil.copytree(sampled, copy)
    with open(copy / "shards" / "shard-000002.tar", "r+b") as f:
        f.seek(600)
        f.write(b"garbage")
    code, out, err = cli("data", "check", "-q", f"data.root={copy}", "--out", tmp_path / "c2")
    assert code == 2 and err.count("\n") == 1 and "shard-000002.tar: sha256 differs" in err


def test_resume_with_other_settings_is_refused(models: tuple[Path, Path], sampled: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sampled, copy)
    e = _error(capsys, _args(models, "--n", "24", "synth.samples_per_shard=5", "--out", str(copy), "--resume"))
    assert "--resume:" in e and "another samples_per_shard" in e
    assert (copy / "run.json").is_file() and (copy / "manifest.json").is_file()  # the refusal left the run finished
    assert main(_args(models, "--n", "24", "--out", str(copy), "--resume")) == 0  # same command: fine, nothing redone
    assert json.loads((copy / "manifest.json").read_text())["count"] == 24


def test_iterable_dataset_without_transform_collates_a_sampled_run(sampled: Path) -> None:
    import torch

    from dtlabel.synth import SynthIterableDataset, SynthSet

    loader = torch.utils.data.DataLoader(SynthIterableDataset(SynthSet(sampled), shuffle_buffer=0), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 16, 16, 3) and "file" not in batch  # a sampled run has no source file
    assert batch["uncertainty"].dtype == torch.float32 and batch["index"].tolist() == [0, 1, 2, 3]


def test_ensemble_uncertainty_keeps_its_resolution(models: tuple[Path, Path], tmp_path: Path) -> None:
    """The mlp-ensemble's divergences are small (thousandths of ln C): 16-bit maps keep them apart."""
    import torch

    from dtlabel.heads import create_head
    from dtlabel.synth import SynthSet
    from dtlabel.teachers import load_teacher

    teacher = load_teacher(models[0], timesteps=(50,))
    torch.manual_seed(0)
    head = create_head("mlp-ensemble", teacher.feature_spec, 4, members=3, hidden=[8])
    head.save(tmp_path / "head_run" / "head", teacher_hash=teacher.teacher_hash(), class_names=["bg", "a", "b", "c"],
              teacher=teacher.describe())
    (tmp_path / "head_run" / "run.json").write_text(json.dumps({"command": "train-head"}))
    out = tmp_path / "synth"
    assert main([*TINY, "--teacher", str(models[0]), "--head", str(tmp_path / "head_run"), "--n", "8", "--out",
                 str(out)]) == 0
    scores = json.loads((out / "manifest.json").read_text())["scores"]
    assert len(set(scores)) == 8 and max(scores) < 0.05  # distinct, and small: no longer all 1/255
    maps = np.concatenate([s["uncertainty"].ravel() for s in SynthSet(out)])
    assert np.abs(maps * 255 - np.rint(maps * 255)).max() > 0.01  # values between the old 8-bit levels


def test_resume_rewrites_a_damaged_shard(models: tuple[Path, Path], sampled: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(sampled, out)
    shard = out / "shards" / "shard-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[:600] + bytes(4400) + good[5000:])
    assert main(_args(models, "--n", "24", "--resume", "--out", str(out))) == 0
    assert shard.read_bytes() == good
