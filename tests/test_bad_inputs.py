"""The bad-input catalogue: one case per user-facing error. Each must exit 2 with exactly one line on
stderr (no traceback) and leave no finished artifact (run.json, manifest.json, an exported model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_labeled_folder
from PIL import Image

from dtlabel.cli import main

TINY = ("--preset", "tiny")
DATA = ("data.n_test=4", "data.n_labeled=16", "data.n_unlabeled=8")
FINISHED = ("run.json", "manifest.json", "teacher", "head", "student", "backbone")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs (a teacher, a head, a synth run) and damaged copies of them."""
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("world")
    w: dict[str, Path] = {"root": root}
    w["teacher"] = build_tiny_ddpm(root / "ddpm", sample_size=32)
    w["other_teacher"] = build_tiny_ddpm(root / "ddpm2", sample_size=32, seed=1)
    assert main(["train-head", *TINY, "-q", *DATA, "--labels", "8", "--teacher", str(w["teacher"]),
                 "head.overlays=0", "--out", str(root / "head")]) == 0
    w["head"] = root / "head"
    assert main(["synthesize", *TINY, "-q", "--n", "12", "--teacher", str(w["teacher"]), "--head", str(w["head"]),
                 "--out", str(root / "synth")]) == 0
    w["synth"] = root / "synth"
    shard = "shards/shard-000001.tar"
    for kind in ("truncated", "random", "cut", "missing", "unfinished"):
        w[f"synth_{kind}"] = dst = root / f"synth_{kind}"
        shutil.copytree(w["synth"], dst)
        data = (dst / shard).read_bytes()
        if kind == "truncated":
            (dst / shard).write_bytes(data[:1000])
        elif kind == "random":
            (dst / shard).write_bytes(np.random.default_rng(0).bytes(len(data)))
        elif kind == "cut":  # same length, a member's bytes zeroed
            (dst / shard).write_bytes(data[:600] + bytes(4400) + data[5000:])
        elif kind == "missing":
            (dst / shard).unlink()
        else:
            (dst / "manifest.json").unlink()
            (dst / "run.json").unlink()
    w["head_unfinished"] = root / "head_unfinished"
    shutil.copytree(w["head"], w["head_unfinished"])
    (w["head_unfinished"] / "run.json").unlink()
    w["fit_unfinished"] = root / "fit_unfinished"
    (w["fit_unfinished"] / "checkpoints").mkdir(parents=True)
    (w["fit_unfinished"] / "config.yaml").write_text("fit: {}\n")
    shutil.copytree(w["teacher"], w["fit_unfinished"] / "teacher")
    for kind in ("corrupt", "mask_size", "class_id"):
        w[f"data_{kind}"] = folder = make_labeled_folder(root / f"data_{kind}", n=12, size=(32, 32))
        if kind == "corrupt":
            (folder / "images" / "0005.png").write_bytes(b"not a png")
        elif kind == "mask_size":
            Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(folder / "masks" / "0005.png")
        else:
            Image.fromarray(np.full((32, 32), 7, np.uint8), mode="L").save(folder / "masks" / "0005.png")
    w["a_file"] = root / "a_file"
    w["a_file"].write_text("not a folder")
    w["finished_out"] = root / "head"
    return w


def _folder_data(w: dict[str, Path], kind: str) -> list[str]:
    return ["data=folder", f"data.root={w[f'data_{kind}']}", 'data.splits.test="0009-0012"']


# (case id, argv builder, a fragment the message must contain)
CASES = [
    ("unknown-command", lambda w: ["frobnicate"], "unknown command"),
    ("unknown-option", lambda w: ["train-head", "--lables", "5"], "unknown option"),
    ("unknown-key", lambda w: ["fit-teacher", *TINY, "fit.stepz=3"], "unknown config key"),
    ("unknown-group-option", lambda w: ["fit-teacher", *TINY, "data=nope"], "unknown data"),
    ("override-syntax", lambda w: ["fit-teacher", *TINY, "steps"], "key=value"),
    ("unknown-data-style", lambda w: ["fit-teacher", *TINY, "data.style=cartoon"], "data.style=cartoon: expected one of"),
    ("non-numeric-float", lambda w: ["fit-teacher", *TINY, "fit.optim.lr=abc"], "expected a number"),
    ("non-numeric-size", lambda w: ["fit-teacher", *TINY, "data.size=abc"], "expected [H,W], two whole numbers"),
    ("fractional-int", lambda w: ["fit-teacher", *TINY, "fit.steps=1.5"], "expected a whole number"),
    ("null-seed", lambda w: ["train-student", *TINY, "--labels", "4", "seed=null"], "expected a whole number"),
    ("non-numeric-budget", lambda w: ["pretrain", *TINY, "--teacher", str(w["teacher"]), "pretrain.max_minutes=soon"],
     "expected a number"),
    ("non-numeric-bool", lambda w: ["train-head", *TINY, "--labels", "4", "--teacher", str(w["teacher"]),
                                    "head.cache=maybe"], "true or false"),
    ("split-not-a-list", lambda w: ["train-student", *TINY, "--labels", "4", "data=folder",
                                    f"data.root={w['data_corrupt']}", "data.splits.test=0.25"], "split 'test'"),
    ("out-parent-is-a-file", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--out",
                                        str(w["a_file"] / "run")], "cannot create the run folder"),
    ("out-is-a-file", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--out", str(w["a_file"])], "is a file"),
    ("out-not-writable", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--out", "/proc/dtlabel-run"],
     "cannot create the run folder"),
    ("out-holds-a-finished-run", lambda w: ["train-head", *TINY, "--labels", "4", "--teacher", str(w["teacher"]),
                                            "--out", str(w["finished_out"])], "already holds a finished run"),
    ("resume-another-command", lambda w: ["train-student", *TINY, "--labels", "4", "--resume",
                                          "--out", str(w["finished_out"])], "is a 'train-head' run"),
    ("teacher-not-found", lambda w: ["train-head", *TINY, "--labels", "4", "--teacher", str(w["root"] / "nope")],
     "not found"),
    ("teacher-unfinished", lambda w: ["train-head", *TINY, "--labels", "4", "--teacher", str(w["fit_unfinished"])],
     "unfinished"),
    ("head-unfinished", lambda w: ["synthesize", *TINY, "--n", "4", "--teacher", str(w["teacher"]),
                                   "--head", str(w["head_unfinished"])], "unfinished"),
    ("head-of-another-teacher", lambda w: ["synthesize", *TINY, "--n", "4", "--teacher", str(w["other_teacher"]),
                                           "--head", str(w["head"])], "trained on teacher"),
    ("synth-not-a-synth-run", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["head"])], "synth"),
    ("synth-unfinished", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["synth_unfinished"])],
     "unfinished"),
    ("synth-shard-truncated", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["synth_truncated"])],
     "damaged shard"),
    ("synth-shard-random-bytes", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["synth_random"])],
     "damaged shard"),
    ("synth-shard-cut-inside-a-member", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["synth_cut"])],
     "damaged shard"),
    ("synth-shard-missing", lambda w: ["train-student", *TINY, *DATA, "--synth", str(w["synth_missing"])], "missing"),
    ("data-check-damaged-synth", lambda w: ["data", "check", f"data.root={w['synth_cut']}"], "problem"),
    ("data-root-missing", lambda w: ["train-student", *TINY, "--labels", "4", "data=folder",
                                     f"data.root={w['root'] / 'nope'}"], "not found"),
    ("corrupt-image", lambda w: ["train-head", *TINY, "--labels", "8", "--teacher", str(w["teacher"]),
                                 *_folder_data(w, "corrupt")], "found before training"),
    ("mask-of-the-wrong-size", lambda w: ["train-student", *TINY, "--labels", "8", *_folder_data(w, "mask_size")],
     "found before training"),
    ("class-id-out-of-range", lambda w: ["train-head", *TINY, "--labels", "8", "--teacher", str(w["teacher"]),
                                         *_folder_data(w, "class_id")], "found before training"),
    ("vit-outside-dpt", lambda w: ["train-student", *TINY, "--labels", "4", "student.encoder=tu-vit_tiny_patch16_224"],
     "is a vision transformer"),
    ("vit-patch-does-not-divide-the-size", lambda w: ["train-student", *TINY, "--labels", "4", "student.arch=DPT",
                                                      "student.encoder=tu-vit_tiny_patch16_224", "data.size=[48,48]"],
     "cuts images into 16x16 patches"),
    ("unknown-timm-encoder", lambda w: ["train-student", *TINY, "--labels", "4", "student.arch=DPT",
                                        "student.encoder=tu-vit_tinyy_patch16_224"], "unknown timm encoder"),
    ("student-without-labels-or-synth", lambda w: ["train-student", *TINY], "needs --labels"),
    ("eval-without-a-model", lambda w: ["eval", *TINY], "exactly one of"),
    ("more-labels-than-the-pool", lambda w: ["train-student", *TINY, *DATA, "--labels", "500"],
     "must be between 1 and the training pool size"),
    ("backbone-not-found", lambda w: ["train-student", *TINY, "--labels", "4", "--backbone", str(w["root"] / "nope")],
     "not found"),
    ("unknown-amp", lambda w: ["train-student", *TINY, "--labels", "4", "amp=fp8"], "amp=fp8: expected one of"),
    ("size-not-two-numbers", lambda w: ["synthesize", *TINY, "--n", "4", "--teacher", str(w["teacher"]),
                                        "--head", str(w["head"]), "synth.size=64"], "two whole numbers"),
    ("pool-of-another-data-set", lambda w: ["synthesize", *TINY, "--teacher", str(w["teacher"]), "--head",
                                            str(w["head"]), "data=folder", f"data.root={w['data_corrupt']}"],
     "trained on data set"),
    ("seed-beyond-32-bits", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--seed", "18446744073709551617"],
     "a seed is a whole number from 0 to 4294967295"),
    ("negative-seed", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--seed", "-1"], "--seed=-1"),
    ("negative-label-seed", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "student.label_seed=-3"],
     "student.label_seed=-3"),
    ("out-name-too-long", lambda w: ["train-student", *TINY, *DATA, "--labels", "4", "--out", str(w["root"] / ("o" * 300))],
     "longer than the file system allows"),
    ("teacher-name-too-long", lambda w: ["train-head", *TINY, "--labels", "4", "--teacher", str(w["root"] / ("t" * 300))],
     "longer than the file system allows"),
    ("data-root-name-too-long", lambda w: ["train-student", *TINY, "--labels", "4", "data=folder",
                                           f"data.root={w['root'] / ('d' * 300)}"], "longer than the file system allows"),
    ("data-root-under-a-file", lambda w: ["train-student", *TINY, "--labels", "4", "data=folder",
                                          f"data.root={w['a_file'] / 'x'}"], "not found"),
    ("export-unknown-format", lambda w: ["export", str(w["synth"]), "--format", "yolo"], "expected one of coco"),
    ("export-unfinished-synth", lambda w: ["export", str(w["synth_unfinished"]), "--format", "png"], "unfinished"),
]


@pytest.mark.parametrize("case, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_finished(case: str, argv, fragment: str,  # noqa: ANN001
                                                           world: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = argv(world)
    out = tmp_path / "out"
    if "--out" not in args and case not in ("unknown-command", "unknown-option"):
        args = [*args, "--out", str(out)]
    capsys.readouterr()
    code = main([*args, "-q"] if case not in ("unknown-command",) else args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (case, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("dtlabel: error: "), (case, lines)
    assert "Traceback" not in err
    assert fragment.lower() in lines[0].lower(), (case, lines[0])
    if out.exists():
        left = [name for name in FINISHED if (out / name).exists()]
        assert not left, (case, left)


def test_an_error_during_training_stands_on_its_own_line_and_is_logged(world: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """With progress bars on (no -q), the error line is not glued to a bar, and the run's log has it."""
    out = tmp_path / "out"
    code = main(["train-student", *TINY, *DATA, "--synth", str(world["synth_cut"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("dtlabel: error: ") and "damaged shard" in last, err[-500:]
    assert "damaged shard" in (out / "train-student.log").read_text()


def test_a_shard_damaged_after_opening_is_one_error(world: dict[str, Path], tmp_path: Path) -> None:
    from dtlabel.errors import DataError
    from dtlabel.synth import SynthSet

    run = tmp_path / "synth"
    shutil.copytree(world["synth"], run)
    ds = SynthSet(run)  # verified here
    shard = run / "shards" / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:600] + bytes(4400) + data[5000:])
    with pytest.raises(DataError, match="damaged shard .*--resume"):
        sum(1 for _ in ds)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["count"] == 12


def test_data_check_prints_only_its_error_line_without_quiet(world: dict[str, Path], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dtlabel.cli", "data", "check", "data=folder",
                           f"data.root={world['data_corrupt']}", "--out", str(tmp_path / "c")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "\r" not in done.stderr
    assert done.stderr.startswith("dtlabel: error: data check found 1 problem(s)")


def test_labeled_images_without_a_labeled_pixel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All labeled masks all ignore (255): refused in one line naming them; more than half: a warning."""
    folder = make_labeled_folder(tmp_path / "d", n=12, size=(32, 32))
    d = ["data=folder", f"data.root={folder}", 'data.splits.test="0011-0012"', 'label_ids=["0001","0002","0003"]']
    for i in (1, 2):
        Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L").save(folder / "masks" / f"{i:04d}.png")
    out = tmp_path / "warned"
    assert main(["train-student", *TINY, "-q", *d, "student.epochs=1", "--out", str(out)]) == 0
    assert "2 of the 3 labeled images have no labeled pixel" in (out / "train-student.log").read_text()
    Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L").save(folder / "masks" / "0003.png")
    capsys.readouterr()
    code = main(["train-student", *TINY, "-q", *d, "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "none of the 3 labeled images has a labeled pixel" in err
    assert not (tmp_path / "refused" / "run.json").exists()
