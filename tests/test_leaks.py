"""No leaks between pseudo-labels and a student's own images: synthesize from a data set's pool
leaves out the head's labeled and validation images (validation and test splits are never in it);
train-student refuses synth samples that are its validation or test images, or drops them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_labeled_folder

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("leaks")
    data = make_labeled_folder(root / "data", n=24, size=(32, 32))
    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    d = ["data=folder", f"data.root={data}", 'data.splits.val="0017-0020"', 'data.splits.test="0021-0024"']
    assert main(["train-head", *TINY, "--labels", "6", "--teacher", str(teacher), *d, "head.val_size=4",
                 "--out", str(root / "head")]) == 0
    return {"root": root, "data": data, "teacher": teacher, "head": root / "head", "d": d}  # type: ignore[dict-item]


def test_synthesize_from_the_pool_leaves_out_labeled_validation_and_test(chain: dict) -> None:
    out = chain["root"] / "pool"
    assert main(["synthesize", *TINY, "--teacher", str(chain["teacher"]), "--head", str(chain["head"]), *chain["d"],
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    head = json.loads((chain["head"] / "head" / "head.json").read_text())
    names = {f["file"] for f in m["source"]["files"]}
    assert m["source"]["data"] == "folder" and m["source"]["excluded"] == 6
    expected = {f"labeled/{i:04d}" for i in range(1, 17)} - {f"labeled/{i}" for i in head["label_ids"]}
    assert names == expected and m["count"] == 10  # 16 training images minus the head's 6 labels
    assert all(len(f["sha256"]) == 64 for f in m["source"]["files"])
    assert m["size"] == [32, 32]


def test_student_refuses_or_drops_pseudo_labels_of_its_validation_and_test_images(chain: dict, cli) -> None:  # noqa: ANN001
    synth = chain["root"] / "all"
    assert main(["synthesize", *TINY, "--teacher", str(chain["teacher"]), "--head", str(chain["head"]),
                 "--images", str(chain["data"] / "images"), "--out", str(synth)]) == 0  # every file: a leak
    args = ["train-student", *TINY, "--synth", str(synth), "--labels", "6", *chain["d"], "student.val_size=4"]
    code, _, err = cli(*args, "--out", chain["root"] / "refused")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "4 pseudo-labeled samples are validation and 4 are test images" in err and "drop_leaked" in err
    out = chain["root"] / "dropped"
    code, _, err = cli(*args, "student.drop_leaked=true", "--out", out)
    assert code == 0, err
    log = (out / "train-student.log").read_text()
    assert "dropped 8 synth samples that are validation / test images" in log
    assert "dropped 6 synth samples that are the labeled images" in log
