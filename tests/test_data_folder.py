"""Labeled/unlabeled folders, splits, class names, the --labels choice and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtlabel.config import compose
from dtlabel.data import build_data
from dtlabel.data.check import check_bundle
from dtlabel.data.splits import choose_labels, resolve_split
from dtlabel.data.transforms import SegmentationDataset, build_transform
from dtlabel.errors import ConfigError, DataError

from conftest import make_labeled_folder


def _bundle(root: Path, *overrides: str):
    return build_data(compose("data_check", ["data=folder", f"data.root={root}", *overrides]).data)


def test_folder_bundle_splits_and_pool(labeled_folder: Path) -> None:
    (labeled_folder / "extra").mkdir()
    Image.new("RGB", (20, 10)).save(labeled_folder / "extra" / "a.webp")
    (labeled_folder / "extra" / "sub").mkdir()
    Image.new("RGB", (20, 10)).save(labeled_folder / "extra" / "sub" / "b.jpg")
    b = _bundle(labeled_folder, 'data.splits.test="0009-0012"', "data.splits.val=[0001,0002]", "data.unlabeled=[extra]")
    assert b.class_names == ["c0", "c1", "c2"] and b.ignore_index == 255
    assert b.splits["test"] == ["0009", "0010", "0011", "0012"]
    assert b.splits["val"] == ["0001", "0002"]
    assert b.splits["train"] == [f"{i:04d}" for i in range(3, 9)]
    # unlabeled pool: the extra folder (recursive, any format) + the training images' RGB
    assert len(b.unlabeled) == 2 + 6
    assert "sub/b.jpg" in b.unlabeled.ids and "labeled/0003" in b.unlabeled.ids
    assert b.unlabeled.image("sub/b.jpg").shape == (10, 20, 3)


def test_split_list_file(labeled_folder: Path) -> None:
    (labeled_folder / "test.txt").write_text("0001\n# comment\n0003\n")
    b = _bundle(labeled_folder, "data.splits.test=test.txt")
    assert b.splits["test"] == ["0001", "0003"]


def test_split_unknown_id(labeled_folder: Path) -> None:
    with pytest.raises(DataError, match=r"split 'test': 1 ids not in the data set \(e.g. '9999'\)"):
        resolve_split(["0001", "9999"], ["0001"], labeled_folder, "test")


def test_classes_from_config_and_key(labeled_folder: Path) -> None:
    (labeled_folder / "classes.json").write_text(json.dumps({"coarse": ["a", "b", "c"], "ignore_index": 0}))
    b = _bundle(labeled_folder, "data.classes_key=coarse", "data.ignore_index=null")
    assert b.class_names == ["a", "b", "c"] and b.ignore_index == 0
    b = _bundle(labeled_folder, "data.classes=[x,y,z]")
    assert b.class_names == ["x", "y", "z"]
    with pytest.raises(DataError, match="no list 'missing' of class names"):
        _bundle(labeled_folder, "data.classes_key=missing")


def test_dataset_transform_shapes(labeled_folder: Path) -> None:
    b = _bundle(labeled_folder)
    ds = SegmentationDataset(b.labeled, b.splits["train"], build_transform((16, 20), train=True))
    x, y = ds[0]
    assert x.shape == (3, 16, 20) and y.shape == (16, 20)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 255}


def test_flip_keeps_image_and_mask_aligned() -> None:
    import albumentations as A

    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :2] = 255
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :2] = 1
    out = A.Compose([A.HorizontalFlip(p=1.0)])(image=img, mask=mask)
    assert (out["mask"][:, -2:] == 1).all() and (out["image"][:, -2:] == 255).all()


def test_choose_labels_deterministic_and_rare_first(tmp_path: Path) -> None:
    root = make_labeled_folder(tmp_path / "d", n=30, num_classes=3)
    # make class 3 rare: only image 0025 has it
    m = np.array(Image.open(root / "masks" / "0025.png"))
    m[:3, :3] = 3
    Image.fromarray(m, mode="L").save(root / "masks" / "0025.png")
    (root / "classes.json").write_text(json.dumps(["a", "b", "c", "rare"]))
    b = _bundle(root)
    pool = b.splits["train"]
    first = choose_labels(b.labeled, pool, 3, seed=0)
    assert first == choose_labels(b.labeled, pool, 3, seed=0)
    assert "0025" in first and len(first) == 3
    assert sorted(choose_labels(b.labeled, pool, 30, seed=5)) == pool


@pytest.mark.parametrize("n", [0, 31])
def test_labels_out_of_range(tmp_path: Path, n: int) -> None:
    root = make_labeled_folder(tmp_path / "d", n=30)
    b = _bundle(root)
    with pytest.raises(ConfigError, match=rf"--labels {n}: must be between 1 and the training pool size 30"):
        choose_labels(b.labeled, b.splits["train"], n)


# ---- bad input through the CLI: one line on stderr, exit 2 -------------------------------------

def _err(cli, *args: str) -> str:
    code, _, err = cli("data", "check", "-q", *args)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dtlabel: error: "), err
    return lines[0]


def test_missing_root(cli, tmp_path: Path) -> None:
    line = _err(cli, "data=folder", f"data.root={tmp_path / 'nope'}", "--out", tmp_path / "r")
    assert "data.root not found" in line and "nope" in line


def test_root_required(cli, tmp_path: Path) -> None:
    line = _err(cli, "data=folder", "--out", tmp_path / "r")
    assert "needs data.root=PATH" in line


def test_empty_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    (tmp_path / "d" / "classes.json").write_text('["a", "b"]')
    line = _err(cli, "data=folder", f"data.root={tmp_path / 'd'}", "--out", tmp_path / "r")
    assert "no image/mask pairs" in line


def test_missing_masks_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "classes.json").write_text('["a", "b"]')
    line = _err(cli, "data=folder", f"data.root={tmp_path / 'd'}", "--out", tmp_path / "r")
    assert "masks folder not found" in line


def test_empty_unlabeled_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "u").mkdir()
    line = _err(cli, "data=images", f"data.root={tmp_path / 'u'}", "--out", tmp_path / "r")
    assert "no images" in line


def test_corrupt_image(cli, labeled_folder: Path, tmp_path: Path) -> None:
    (labeled_folder / "images" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "cannot read image" in line and "0003.png" in line
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["problems"]) == 1
    assert not (tmp_path / "r" / "run.json").exists()  # an error run is not a finished run


def test_mask_size_mismatch(cli, labeled_folder: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(labeled_folder / "masks" / "0002.png")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "mask size 10x10 differs from image size 32x24" in line and "0002" in line


def test_class_id_out_of_range(cli, labeled_folder: Path, tmp_path: Path) -> None:
    m = np.array(Image.open(labeled_folder / "masks" / "0004.png"))
    m[0, 0] = 7
    Image.fromarray(m, mode="L").save(labeled_folder / "masks" / "0004.png")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "class id 7 outside [0, 3)" in line and "0004" in line
    assert str(labeled_folder / "masks" / "0004.png") in line  # the mask's path, not the image's


def test_a_palette_mask_index_beyond_the_classes_names_the_mask(cli, labeled_folder: Path, tmp_path: Path) -> None:
    m = np.array(Image.open(labeled_folder / "masks" / "0003.png"))
    m[1, 1] = 9
    pal = Image.fromarray(m, mode="P")
    pal.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    pal.save(labeled_folder / "masks" / "0003.png")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "class id 9 outside [0, 3)" in line and str(labeled_folder / "masks" / "0003.png") in line


def test_ignore_index_is_allowed(labeled_folder: Path) -> None:
    m = np.array(Image.open(labeled_folder / "masks" / "0004.png"))
    m[0, 0] = 255
    Image.fromarray(m, mode="L").save(labeled_folder / "masks" / "0004.png")
    rep = check_bundle(_bundle(labeled_folder), progress=False)
    assert rep.problems == [] and rep.ignored_share > 0


def test_rgb_mask_rejected(cli, labeled_folder: Path, tmp_path: Path) -> None:
    Image.new("RGB", (32, 24)).save(labeled_folder / "masks" / "0005.png")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "mode RGB" in line and "single-channel" in line


def test_no_classes(cli, tmp_path: Path) -> None:
    root = make_labeled_folder(tmp_path / "d", classes_json=False)
    line = _err(cli, "data=folder", f"data.root={root}", "--out", tmp_path / "r")
    assert "no class names" in line and "classes.json" in line


def test_invalid_classes_json(cli, labeled_folder: Path, tmp_path: Path) -> None:
    (labeled_folder / "classes.json").write_text("{not json")
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "classes.json is not valid JSON" in line


def test_check_reports_shares(labeled_folder: Path) -> None:
    rep = check_bundle(_bundle(labeled_folder), progress=False)
    assert rep.labeled == 12 and rep.problems == []
    assert rep.pixel_share[0] > 0.5 and abs(sum(rep.pixel_share) - 1) < 1e-5
    assert rep.image_share[1] > 0 and rep.sizes == {"32x24": 12}
    assert "c1" in rep.table()


def test_image_without_mask_is_a_problem(cli, labeled_folder: Path, tmp_path: Path) -> None:
    (labeled_folder / "masks" / "0006.png").unlink()
    line = _err(cli, "data=folder", f"data.root={labeled_folder}", "--out", tmp_path / "r")
    assert "image without mask" in line and "0006" in line
