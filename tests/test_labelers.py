"""synthesize with any finished model as the labeler: a student (--labeler, no teacher), an ensemble
of a head and a student (--ensemble): the same shards twice, resume after SIGKILL, the pool's leak
rules over every member, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_labeled_folder

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 24-image folder data set (val 0017-0020, test 0021-0024), a tiny teacher, a head on 6 labels
    and a scratch student on 6 other labels (another label seed)."""
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("labelers")
    data = make_labeled_folder(root / "data", n=24, size=(32, 32))
    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    d = ["data=folder", f"data.root={data}", 'data.splits.val="0017-0020"', 'data.splits.test="0021-0024"']
    assert main(["train-head", *TINY, "--labels", "6", "--teacher", str(teacher), *d, "--out", str(root / "head")]) == 0
    assert main(["train-student", *TINY, "--labels", "6", "student.label_seed=5", *d,
                 "--out", str(root / "student")]) == 0
    return {"root": root, "data": data, "teacher": teacher, "head": root / "head", "student": root / "student", "d": d}


def _synth(chain: dict, out: Path, *labeler: str) -> list[str]:
    return ["synthesize", *TINY, *chain["d"], "synth.samples_per_shard=3", "synth.batch_size=2", *labeler,
            "--out", str(out)]


def _shard_hashes(run: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((run / "manifest.json").read_text())["shards"]]


def _logits(run: Path) -> dict[str, np.ndarray]:
    from dtlabel.synth import SynthSet

    return {s["file"]: s["logits"].astype(np.float32) for s in SynthSet(run).iter()}


def test_student_labels_the_pool_without_a_teacher_the_same_bytes_twice(chain: dict) -> None:
    a, b = chain["root"] / "st-a", chain["root"] / "st-b"
    for out in (a, b):
        assert main(_synth(chain, out, "--labeler", str(chain["student"]))) == 0
    assert _shard_hashes(a) == _shard_hashes(b)
    m = json.loads((a / "manifest.json").read_text())
    run = json.loads((a / "run.json").read_text())
    student = json.loads((chain["student"] / "student" / "student.json").read_text())
    assert m["teacher"] is None and m["labeler"]["kind"] == "student" and len(m["labeler"]["hash"]) == 16
    assert run["labeler"]["hash"] == m["labeler"]["hash"] == m["head"]["hash"]
    assert m["uncertainty"]["head"] == "predictive entropy (nats)"
    # the pool: the 16 training images minus the student's 6 labels and its validation slice (the
    # data set's val split here, never in the pool anyway); no validation or test image
    names = {f["file"] for f in m["source"]["files"]}
    held = {f"labeled/{i}" for i in student["label_ids"]}
    assert names == {f"labeled/{i:04d}" for i in range(1, 17)} - held and m["count"] == 10
    assert m["head"]["label_ids"] == student["label_ids"]


def test_ensemble_is_the_members_mean_and_resumes_to_the_same_shards(chain: dict) -> None:
    t = ["--teacher", str(chain["teacher"])]
    whole = chain["root"] / "ens"
    assert main(_synth(chain, whole, *t, "--ensemble", str(chain["head"]), str(chain["student"]))) == 0
    m = json.loads((whole / "manifest.json").read_text())
    assert m["labeler"]["kind"] == "ensemble" and [x["kind"] for x in m["labeler"]["members"]] == ["head", "student"]
    assert m["uncertainty"]["head"].startswith("Jensen-Shannon")
    head_json = json.loads((chain["head"] / "head" / "head.json").read_text())
    student_json = json.loads((chain["student"] / "student" / "student.json").read_text())
    held = {*head_json["label_ids"], *head_json["val_ids"], *student_json["label_ids"], *student_json["val_ids"]}
    names = {f["file"] for f in m["source"]["files"]}
    assert not names & {f"labeled/{i}" for i in held} and set(m["head"]["label_ids"]) >= set(head_json["label_ids"])
    assert names and all(int(n.split("/")[1]) <= 16 for n in names)  # no validation (17-20) or test (21-24) image
    # the same 8 files (same indices, so the head reads the same noise) labeled by each member and by both:
    # the ensemble's stored log-probabilities are the log of the members' mean (area averaging is linear)
    imgs = ["--images", str(chain["data"] / "images"), "--n", "8"]
    one = {}
    for name, labeler in (("head", ["--labeler", str(chain["head"])]), ("student", ["--labeler", str(chain["student"])]),
                          ("both", ["--ensemble", str(chain["head"]), str(chain["student"])])):
        assert main(["synthesize", *TINY, *t, *imgs, *labeler, "--out", str(chain["root"] / f"img-{name}")]) == 0
        one[name] = _logits(chain["root"] / f"img-{name}")
    for name, e in one["both"].items():
        mean = (np.exp(one["head"][name]) + np.exp(one["student"][name])) / 2
        assert np.abs(np.exp(e) - mean).max() < 5e-3, name
    # killed after two shards, --resume ends with the uninterrupted run's shards
    killed = chain["root"] / "ens-killed"
    cmd = [sys.executable, "-m", "dtlabel.cli", *_synth(chain, killed, *t, "--ensemble", str(chain["head"]),
                                                         str(chain["student"]))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "shards").glob("*.tar"))) < 2:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (killed / "run.json").exists(), "the run finished before it could be killed"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _shard_hashes(killed) == _shard_hashes(whole)


def test_students_keep_the_ensembles_images_out_of_validation(chain: dict) -> None:
    """A student trained on an ensemble's pseudo-labels of the --images folder (all 24 files, so
    validation and test copies too) is refused in one line, as for a head's."""
    synth = chain["root"] / "ens-all"
    assert main(["synthesize", *TINY, "--teacher", str(chain["teacher"]), "--ensemble", str(chain["head"]),
                 str(chain["student"]), "--images", str(chain["data"] / "images"), "--out", str(synth)]) == 0
    code = main(["train-student", *TINY, "--synth", str(synth), "--labels", "6", *chain["d"],
                 "--out", str(chain["root"] / "refused")])
    assert code == 2


def test_labeler_errors_are_one_line(chain: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = make_labeled_folder(tmp_path / "four", n=12, size=(32, 32), num_classes=4)
    d4 = ["data=folder", f"data.root={other}", 'data.splits.test="0011-0012"']
    assert main(["train-student", *TINY, "--labels", "4", *d4, "--out", str(tmp_path / "st4")]) == 0
    capsys.readouterr()
    runs = iter(range(100))

    def err(*args: str) -> str:
        code = main([*args, "--out", str(tmp_path / "runs" / str(next(runs)))])
        text = capsys.readouterr().err.strip()
        assert code == 2 and len(text.splitlines()) == 1, text
        return text

    t = ["--teacher", str(chain["teacher"])]
    e = err(*_synth(chain, tmp_path / "x", *t, "--ensemble", str(chain["head"]), str(tmp_path / "st4"))[:-2])
    assert "every member must predict the same class list" in e
    e = err(*_synth(chain, tmp_path / "x", "--labeler", str(tmp_path / "st4"))[:-2])
    assert "predicts classes" in e or "was trained on data set" in e
    assert "not --head and --labeler" in err(*_synth(chain, tmp_path / "x", "--head", str(chain["head"]),
                                                         "--labeler", str(chain["student"]))[:-2])
    assert "needs at least one run folder" in err("synthesize", *TINY, "--ensemble", "synth.batch_size=2")
    assert "at least two runs" in err(*_synth(chain, tmp_path / "x", "--ensemble", str(chain["student"]))[:-2])
    assert "needs --teacher DIR for a head" in err(*_synth(chain, tmp_path / "x", "--labeler", str(chain["head"]))[:-2])
    assert "--n needs --teacher" in err("synthesize", *TINY, "--n", "4", "--labeler", str(chain["student"]))
    assert "neither a train-head nor a train-student run" in err(*_synth(chain, tmp_path / "x", "--labeler",
                                                                         str(chain["data"]))[:-2])
