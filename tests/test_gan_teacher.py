"""The GAN teacher family: fit-teacher fit.family=gan, its folder, and the commands that read it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint_then_resume
from safetensors.torch import load_file

ARGS = ("fit-teacher", "--preset", "tiny", "fit.family=gan", "fit.steps=6", "fit.checkpoint_every=2",
        "fit.gan.encoder_steps=4", "fit.sample_n=4", "data.size=[32,32]", "-q")
TINY = ("--preset", "tiny", "data.size=[32,32]", "-q")


def _teacher_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "teacher").iterdir()) if p.suffix == ".safetensors"}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.cli import main

    out = tmp_path_factory.mktemp("gan") / "fit"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_fit_writes_a_self_describing_teacher_folder(gan_run: Path) -> None:
    from dtlabel.teachers import GanTeacher, load_teacher
    from dtlabel.teachers.gan_arch import Encoder, Generator

    desc = json.loads((gan_run / "run.json").read_text())
    assert desc["family"] == "gan" and desc["steps"] == 6 and desc["encoder_steps"] == 4
    assert 0 < desc["reconstruction_l1"] < 2
    for name in ("loss.png", "samples.png", "reconstructions.png", "metrics.jsonl"):
        assert (gan_run / name).is_file(), name
    folder = gan_run / "teacher"
    gan = json.loads((folder / "gan.json").read_text())
    assert gan["format"] == "dtlabel-gan/1" and gan["generator"]["size"] == [32, 32]
    # the folder loads with the networks alone (no training code), into the teacher's own weights
    gen = Generator(**gan["generator"])
    gen.load_state_dict(load_file(str(folder / "generator.safetensors")), strict=True)
    Encoder(**gan["encoder"]).load_state_dict(load_file(str(folder / "encoder.safetensors")), strict=True)
    teacher = load_teacher(gan_run)
    assert isinstance(teacher, GanTeacher) and teacher.encoder is not None
    z = teacher.latents(2, 5, teacher.z_dim)
    torch.testing.assert_close(gen.eval()(z), teacher.features_at(z)[0])


def test_samples_carry_the_generator_maps_at_strides_4_to_32(gan_run: Path) -> None:
    from dtlabel.teachers import load_teacher

    teacher = load_teacher(gan_run)
    out = teacher.sample(3, seed=11, batch_size=2)
    assert out.images.shape == (3, 3, 32, 32) and out.seeds == [11, 12, 13]
    assert teacher.feature_spec.strides == (32, 16, 8, 4)
    for (name, channels, stride), f in zip(teacher.feature_spec, out.features.values()):
        assert f.shape == (3, channels, 32 // stride, 32 // stride), name
    alone = teacher.sample(1, seed=13)  # sample 2 of seed 11 is seed 13's first
    torch.testing.assert_close(out.images[2:], alone.images)
    # a real image's features are the generator's maps at its encoded latent
    feats = teacher.features(out.images)
    again = teacher.features_at(teacher.encode(out.images))[1]
    assert all(torch.equal(feats[k], again[k]) for k in feats)


def test_extending_a_finished_run_trains_its_encoder_anew(gan_run: Path, tmp_path: Path) -> None:
    import shutil

    from dtlabel.cli import main

    out = tmp_path / "longer"
    shutil.copytree(gan_run, out)
    before = (out / "teacher" / "encoder.safetensors").read_bytes()
    assert main([*ARGS, "fit.steps=8", "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "encoder" / "generator_step.json").read_text()) == {"generator_step": 8}
    assert "training it anew for step 8" in (out / "fit-teacher.log").read_text()
    assert (out / "teacher" / "encoder.safetensors").read_bytes() != before


def test_budget_stop_then_resume_gives_the_same_teacher(gan_run: Path, tmp_path: Path) -> None:
    from dtlabel.cli import main

    out = tmp_path / "split"
    assert main([*ARGS, "fit.max_minutes=0", "fit.gan.optim.schedule=steps", "--out", str(out)]) == 0
    first = json.loads((out / "run.json").read_text())
    assert first["stopped_early"] is True and first["encoder_steps"] == 0  # a samples-only teacher so far
    assert json.loads((out / "teacher" / "gan.json").read_text())["encoder"] is None
    assert main([*ARGS, "--resume", "--out", str(out)]) == 0
    assert _teacher_bytes(out) == _teacher_bytes(gan_run)


def test_a_generator_given_a_budget_ends_with_it_and_gets_its_encoder(tmp_path: Path) -> None:
    from dtlabel.cli import main

    out = tmp_path / "budget"
    assert main([*ARGS, "fit.max_minutes=0.0001", "--out", str(out)]) == 0  # schedule auto: budget
    desc = json.loads((out / "run.json").read_text())
    assert desc["schedule"] == "budget" and desc["stopped_early"] is True and desc["steps"] < 6
    assert desc["encoder_steps"] == 4  # and the encoder stage followed: the teacher reads real images
    assert json.loads((out / "teacher" / "gan.json").read_text())["encoder"] is not None


def test_an_fp16_export_halves_the_folder_and_samples_as_the_fp32_one(gan_run: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from dtlabel.cli import main
    from dtlabel.teachers import load_teacher

    out = tmp_path / "half"
    assert main([*ARGS, "fit.export_dtype=fp16", "--out", str(out)]) == 0
    sizes = {}
    for run in (gan_run, out):
        sizes[run] = sum(p.stat().st_size for p in (run / "teacher").glob("*.safetensors"))
    assert sizes[out] < 0.55 * sizes[gan_run]
    with safe_open(str(out / "teacher" / "generator.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16, torch.int64}  # batch norm's step counters stay integers
    full, half = load_teacher(gan_run).sample(4, seed=3), load_teacher(out).sample(4, seed=3)
    torch.testing.assert_close(half.images, full.images, atol=2e-2, rtol=0)


def test_sigkill_then_resume_gives_the_same_teacher(gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dtlabel.cli", *ARGS, "fit.steps=60", "fit.checkpoint_every=3", "--out", str(out)]
    kill_after_first_checkpoint_then_resume(cmd, out, settle=0.2)
    from dtlabel.cli import main

    ref = tmp_path / "whole"
    assert main([*ARGS, "fit.steps=60", "fit.checkpoint_every=3", "--out", str(ref)]) == 0
    assert _teacher_bytes(out) == _teacher_bytes(ref)


def test_commands_read_a_gan_teacher_unchanged(gan_run: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    head, synth, pool, pre = (tmp_path / n for n in ("head", "synth", "pool", "pretrain"))
    code, _, err = cli("train-head", "--labels", "8", "--teacher", gan_run, *TINY, "--out", head)
    assert code == 0, err
    code, _, err = cli("synthesize", "--teacher", gan_run, "--head", head, "--n", "6", *TINY, "--out", synth)
    assert code == 0, err
    manifest = json.loads((synth / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["sampler"] == "generator"
    code, _, err = cli("synthesize", "--teacher", gan_run, "--head", head, *TINY, "synth.pool_images=4", "--out", pool)
    assert code == 0, err
    code, _, err = cli("pretrain", "--teacher", gan_run, *TINY, "--out", pre)
    assert code == 0, err
    code, _, err = cli("train-student", "--labels", "8", "--synth", synth, *TINY, "--out", tmp_path / "student")
    assert code == 0, err
    assert 0 <= json.loads((tmp_path / "student" / "run.json").read_text())["test_miou"] <= 100


def test_a_gan_without_encoder_cannot_read_real_images(tmp_path: Path, cli) -> None:  # noqa: ANN001
    from dtlabel.teachers.tiny import build_tiny_gan

    folder = build_tiny_gan(tmp_path / "gan", encoder=False)
    code, _, err = cli("train-head", "--labels", "8", "--teacher", folder, *TINY, "--out", tmp_path / "head")
    assert code == 2 and err.count("\n") == 1 and "has no encoder, so it cannot read real images" in err


def test_gan_size_must_be_a_multiple_of_32(tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli(*ARGS, "data.size=[48,40]", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "multiples of 32 on each side, got 48x40" in err


def test_unknown_diffaug_policy(tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli(*ARGS, "fit.gan.diffaug=[color,cutuot]", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "fit.gan.diffaug: unknown policy 'cutuot' (did you mean: cutout?)" in err


def test_a_gan_folder_missing_its_encoder_weights(gan_run: Path, tmp_path: Path) -> None:
    import shutil

    from dtlabel.errors import ModelError
    from dtlabel.teachers import load_teacher

    broken = tmp_path / "broken"
    shutil.copytree(gan_run / "teacher", broken)
    (broken / "encoder.safetensors").unlink()
    with pytest.raises(ModelError, match="names an encoder but encoder.safetensors is missing") as exc:
        load_teacher(broken)
    assert "\n" not in str(exc.value)


def test_init_from_is_for_ddpm_teachers(tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli(*ARGS, "fit.init_from=models/default", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "a GAN teacher continues its own run with --resume" in err


def test_pretrain_on_samples_resumes_to_the_same_backbone(gan_run: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    from dtlabel.cli import main

    args = ("pretrain", "--teacher", gan_run, *TINY, "pretrain.source=samples", "pretrain.steps=4",
            "pretrain.checkpoint_every=2", "pretrain.optim.schedule=steps")
    whole, split = tmp_path / "whole", tmp_path / "split"
    code, _, err = cli(*args, "--out", whole)
    assert code == 0, err
    desc = json.loads((whole / "run.json").read_text())
    assert desc["source"] == "samples" and desc["pool_size"] is None and desc["images_seen"] == 16
    assert (whole / "features.png").is_file()
    assert main([*map(str, args), "pretrain.max_minutes=0", "--out", str(split)]) == 0  # one step, then stopped
    assert json.loads((split / "run.json").read_text())["steps"] == 1
    assert main([*map(str, args), "--resume", "--out", str(split)]) == 0
    weights = "backbone/backbone.safetensors"
    assert (split / weights).read_bytes() == (whole / weights).read_bytes()


def test_a_samples_only_gan_pretrains_on_samples_by_default(tmp_path: Path, cli) -> None:  # noqa: ANN001
    from dtlabel.teachers.tiny import build_tiny_gan

    folder = build_tiny_gan(tmp_path / "gan", encoder=False)
    code, _, err = cli("pretrain", "--teacher", folder, *TINY, "pretrain.steps=2", "--out", tmp_path / "p")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "run.json").read_text())["source"] == "samples"
    code, _, err = cli("pretrain", "--teacher", folder, *TINY, "pretrain.source=samples", "--images", tmp_path,
                       "--out", tmp_path / "q")
    assert code == 2 and err.count("\n") == 1 and "drop --images DIR" in err


# ---------------------------------------------------------------------------- DatasetGAN's workflow
def _cvat_zip(path: Path, images: Path, keys: list[str], colours: dict[int, tuple[int, int, int]]) -> Path:
    """What CVAT exports after a person labelled ``keys``: bright pixels are class 1, the rest class 0."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n" +
                   "".join(f"{n}:{','.join(map(str, colours[c]))}::\n" for c, n in enumerate(["background", "bright"])))
        for key in keys:
            gray = np.asarray(Image.open(images / f"{key}.png").convert("L"))
            ids = (gray > np.median(gray)).astype(np.uint8)
            rgb = np.array([colours[0], colours[1]], np.uint8)[ids]
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            z.writestr(f"SegmentationClass/{key}.png", buf.getvalue())
    return path


def test_labelled_samples_train_a_head_at_their_stored_latents(tmp_path: Path, cli) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from dtlabel.teachers.tiny import build_tiny_gan

    teacher = build_tiny_gan(tmp_path / "gan", encoder=False)  # no encoder: only exact latents can read the images
    labeling = tmp_path / "to-label"
    code, _, err = cli("synthesize", "--teacher", teacher, "--n", "8", "--for-labeling", *TINY, "--out", labeling)
    assert code == 0, err
    record = json.loads((labeling / "labeling.json").read_text())
    keys = record["keys"]
    assert keys == [f"{i:08d}" for i in range(8)] and record["size"] == [32, 32]
    assert sorted(p.name for p in (labeling / "images").iterdir()) == [f"{k}.png" for k in keys]
    assert load_file(str(labeling / "latents.safetensors"))["z"].shape == (8, 16)

    colours = {0: (0, 0, 0), 1: (250, 50, 50)}
    export = _cvat_zip(tmp_path / "segmentation_mask_1.1.zip", labeling / "images", keys[:7], colours)
    code, _, err = cli("import-labels", labeling, "--from", export, "--format", "cvat", "-q")
    assert code == 0, err
    assert json.loads((labeling / "classes.json").read_text()) == {"classes": ["background", "bright"]}
    mask = np.asarray(Image.open(labeling / "masks" / f"{keys[0]}.png"))
    gray = np.asarray(Image.open(labeling / "images" / f"{keys[0]}.png").convert("L"))
    assert np.array_equal(mask, (gray > np.median(gray)).astype(np.uint8))
    assert not (labeling / "masks" / f"{keys[7]}.png").exists()  # left unlabelled

    head = tmp_path / "head"
    code, _, err = cli("train-head", "--teacher", teacher, "--labels", "4", "--preset", "tiny", "data=folder",
                       f"data.root={labeling}", "data.size=[32,32]", "data.splits.test=[00000005,00000006]", "-q",
                       "--out", head)
    assert code == 0, err
    assert "at their stored latents" in (head / "train-head.log").read_text()
    assert 0 <= json.loads((head / "run.json").read_text())["test_miou"] <= 100

    # bad input: another size than the samples', a tool's other region kinds or an empty export,
    # the latents gone, or labels from a tool with another class list
    code, _, err = cli("train-head", "--teacher", teacher, "--labels", "4", "--preset", "tiny", "data=folder",
                       f"data.root={labeling}", "data.size=[64,64]", "data.splits.test=[00000005,00000006]",
                       "--out", tmp_path / "head1")
    assert code == 2 and err.count("\n") == 1 and "are 32x32 but data.size is 64x64" in err
    brush = [{"data": {"image": f"{keys[0]}.png"}, "annotations": [{"result": [{"type": "brushlabels", "value": {}}]}]}]
    (tmp_path / "brush.json").write_text(json.dumps(brush))
    code, _, err = cli("import-labels", labeling, "--from", tmp_path / "brush.json", "--format", "labelstudio")
    assert code == 2 and err.count("\n") == 1 and "holds a 'brushlabels' region" in err
    (tmp_path / "empty.json").write_text("[]")
    code, _, err = cli("import-labels", labeling, "--from", tmp_path / "empty.json", "--format", "labelstudio")
    assert code == 2 and err.count("\n") == 1 and "no labelled image in it" in err
    assert len(list((labeling / "masks").iterdir())) == 7  # left as it was
    (labeling / "latents.safetensors").unlink()
    code, _, err = cli("train-head", "--teacher", teacher, "--labels", "4", "--preset", "tiny", "data=folder",
                       f"data.root={labeling}", "data.size=[32,32]", "data.splits.test=[00000005,00000006]",
                       "--out", tmp_path / "head2")
    assert code == 2 and err.count("\n") == 1 and "have lost their latents" in err
    tasks = [{"data": {"image": f"/data/upload/1/ab12-{keys[0]}.png"}, "annotations": [{"result": [
        {"type": "polygonlabels", "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["shiny"]}}]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    code, _, err = cli("import-labels", labeling, "--from", tmp_path / "ls.json", "--format", "labelstudio",
                       "--classes", "background", "bright")
    assert code == 2 and err.count("\n") == 1 and "label 'shiny' of 00000000 is not in the class list" in err


def test_label_studio_polygons_come_back_as_masks(tmp_path: Path, cli) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from dtlabel.teachers.tiny import build_tiny_gan

    labeling = tmp_path / "to-label"
    code, _, err = cli("synthesize", "--teacher", build_tiny_gan(tmp_path / "gan"), "--n", "2", "--for-labeling",
                       *TINY, "--out", labeling)
    assert code == 0, err
    square = {"type": "polygonlabels", "value": {"points": [[25, 25], [75, 25], [75, 75], [25, 75]],
                                                  "polygonlabels": ["thing"]}}
    tasks = [{"data": {"image": "/data/local-files/?d=images/00000001.png"}, "annotations": [{"result": [square]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    code, _, err = cli("import-labels", labeling, "--from", tmp_path / "ls.json", "--format", "labelstudio",
                       "--classes", "background", "thing", "-q")
    assert code == 0, err
    mask = np.asarray(Image.open(labeling / "masks" / "00000001.png"))
    assert mask.shape == (32, 32) and mask[16, 16] == 1 and mask[2, 2] == 0 and 200 < int(mask.sum()) < 350


def test_for_labeling_needs_a_teacher_that_stores_latents(tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli("synthesize", "--teacher", "models/default", "--n", "2", "--for-labeling", "--preset", "tiny",
                       "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "--for-labeling stores each sample's latent" in err
