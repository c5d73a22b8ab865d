"""data=coco: instance and panoptic json -> semantic masks, class maps, splits and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from dtlabel.config import compose
from dtlabel.data import build_data
from dtlabel.errors import ConfigError, DataError

H, W = 24, 32
# listed out of id order on purpose: classes follow ascending category id
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _rle_uncompressed(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = m.ravel(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _rle_compressed(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        Image.new("RGB", (W, H), (10 * k, 50, 90)).save(folder / n)


def make_instances(root: Path) -> Path:
    """root/imgs/00000{1,2,3}.jpg + extra.jpg, root/ann.json (image 4 is in the json but not on disk)."""
    _write_images(root / "imgs", ["000001.jpg", "000002.jpg", "000003.jpg", "extra.jpg"])
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "height": H, "width": W} for i in (1, 2, 3, 4)]
    anns = [
        # image 1: a small person (listed first) on a large car; must stay on top (drawn by decreasing area)
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 36.0,
         "segmentation": [[4, 4, 10, 4, 10, 10, 4, 10]], "bbox": [4, 4, 6, 6]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 320.0,
         "segmentation": [[0, 0, 20, 0, 20, 16, 0, 16]], "bbox": [0, 0, 20, 16]},
        # a dog as compressed RLE, a crowd of people as uncompressed RLE
        {"id": 3, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 36.0,
         "segmentation": _rle_compressed(_box(24, 2, 30, 8)), "bbox": [24, 2, 6, 6]},
        {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 56.0,
         "segmentation": _rle_uncompressed(_box(24, 16, 32, 23)), "bbox": [24, 16, 8, 7]},
        # image 2: a car covering the bottom half
        {"id": 5, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 384.0,
         "segmentation": _rle_compressed(_box(0, 12, 32, 24)), "bbox": [0, 12, 32, 12]},
        {"id": 6, "image_id": 4, "category_id": 3, "iscrowd": 0, "area": 4.0,
         "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]], "bbox": [0, 0, 2, 2]},
    ]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return root


def make_panoptic(root: Path) -> Path:
    """root/imgs/000001.jpg, root/annotations/panoptic_val.json and its PNG in annotations/panoptic_val/."""
    _write_images(root / "imgs", ["000001.jpg"])
    seg = np.zeros((H, W), np.int64)          # 0 = void
    seg[:, :10] = 7                           # sky
    seg[:, 10:20] = 300                       # person (needs the G channel)
    seg[:12, 20:] = 65536 + 5                 # crowd of people (needs the B channel)
    seg[0:2, 0:2] = 999                       # an id missing from segments_info -> ignored
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], -1).astype(np.uint8)
    (root / "annotations" / "panoptic_val").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "annotations" / "panoptic_val" / "000001.png")
    cats = [{"id": 187, "name": "sky-other-merged", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1}]
    segments = [{"id": 7, "category_id": 187, "iscrowd": 0, "area": 230},
                {"id": 300, "category_id": 1, "iscrowd": 0, "area": 240},
                {"id": 65541, "category_id": 1, "iscrowd": 1, "area": 144}]
    data = {"images": [{"id": 1, "file_name": "000001.jpg", "height": H, "width": W}],
            "annotations": [{"image_id": 1, "file_name": "000001.png", "segments_info": segments}],
            "categories": cats}
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_instances(tmp_path / "coco")


def _bundle(root: Path, *overrides: str, ann: str = "ann.json"):
    return build_data(compose("data_check", ["data=coco", f"data.root={root}", f"data.annotations={ann}",
                                             "data.images=imgs", *overrides]).data)


def test_instances_masks_all_categories(coco_root: Path) -> None:
    b = _bundle(coco_root)
    src = b.labeled
    assert b.class_names == ["background", "person", "car", "dog"]
    assert src.ids == ["000001", "000002", "000003"]          # 000004 is not on disk, extra.jpg not in the json
    m = src.mask("000001")
    assert m.dtype == np.uint8 and m.shape == (H, W)
    assert src.image("000001").shape == (H, W, 3)
    assert (m[5:9, 5:9] == 1).all()                           # small person drawn over the large car
    assert m[12, 15] == 2 and m[2, 14] == 2                   # car around it
    assert (m[2:8, 24:30] == 3).all() and m[1, 27] == 0       # dog from compressed RLE, exact
    assert (m[16:23, 24:32] == 255).all() and m[23, 28] == 0  # crowd region from uncompressed RLE -> ignore
    assert m[20, 5] == 0
    assert set(np.unique(m)) == {0, 1, 2, 3, 255}
    m2 = src.mask("000002")
    assert (m2[12:] == 2).all() and (m2[:12] == 0).all()
    assert (src.mask("000003") == 0).all()                    # no annotations -> all background
    m[:] = 7
    assert src.mask("000001")[20, 5] == 0                     # the cache hands out copies


def test_category_map_and_unmapped(coco_root: Path) -> None:
    b = _bundle(coco_root, "data.category_map={person: human, dog: animal}", "data.unmapped=ignore")
    assert b.class_names == ["background", "human", "animal"]
    m = b.labeled.mask("000001")
    assert (m[5:9, 5:9] == 1).all() and m[12, 15] == 255      # unmapped car -> ignore
    assert (m[2:8, 24:30] == 2).all() and m[16, 24] == 255 and m[20, 5] == 0
    # several categories to one class; the unmapped person in front of the car becomes background
    b = _bundle(coco_root, "data.category_map={car: vehicle, dog: vehicle}", "data.background=bg")
    assert b.class_names == ["bg", "vehicle"]
    m = b.labeled.mask("000001")
    assert (m[5:9, 5:9] == 0).all() and m[12, 15] == 1 and m[4, 27] == 1
    assert m[20, 28] == 0                                     # crowd of an unmapped category: background


def test_panoptic(tmp_path: Path) -> None:
    root = make_panoptic(tmp_path / "pan")
    b = _bundle(root, ann="annotations/panoptic_val.json")
    assert b.class_names == ["background", "person", "sky-other-merged"]
    m = b.labeled.mask("000001")
    assert (m[2:, :10] == 2).all() and (m[0:2, 0:2] == 255).all()
    assert (m[:, 10:20] == 1).all()
    assert (m[:12, 20:] == 255).all() and (m[12:, 20:] == 255).all()  # crowd and void -> ignore
    b = _bundle(root, "data.category_map={sky-other-merged: sky}", "data.unmapped=background",
                ann="annotations/panoptic_val.json")
    m = b.labeled.mask("000001")
    assert b.class_names == ["background", "sky"] and m[5, 5] == 1 and m[5, 15] == 0 and m[5, 25] == 0
    # an explicit PNG folder
    (root / "annotations" / "panoptic_val").rename(root / "pngs")
    b = _bundle(root, "data.panoptic_masks=pngs", ann="annotations/panoptic_val.json")
    assert b.labeled.mask("000001")[5, 15] == 1


def test_splits_and_unlabeled_pool(coco_root: Path) -> None:
    b = _bundle(coco_root, 'data.splits.test="2-2"', "data.splits.val=[000003]")
    assert b.splits == {"train": ["000001"], "val": ["000003"], "test": ["000002"]}
    assert b.unlabeled.ids == ["labeled/000001"]
    assert b.unlabeled.image("labeled/000001").shape == (H, W, 3)
    (coco_root / "more").mkdir()
    Image.new("RGB", (W, H)).save(coco_root / "more" / "u.png")
    b = _bundle(coco_root, "data.unlabeled=[more]", "data.unlabeled_splits=[]")
    assert b.splits["train"] == ["000001", "000002", "000003"] and b.unlabeled.ids == ["u.png"]


def test_errors(coco_root: Path) -> None:
    with pytest.raises(DataError, match=r"COCO annotation json not found: .*nope\.json; set data\.annotations="):
        _bundle(coco_root, ann="nope.json")
    (coco_root / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        _bundle(coco_root, ann="bad.json")
    (coco_root / "other.json").write_text(json.dumps({"foo": []}))
    with pytest.raises(DataError, match=r"other\.json is not a COCO annotation json"):
        _bundle(coco_root, ann="other.json")
    with pytest.raises(DataError, match=r"COCO image folder not found: .*missing; set data\.images="):
        _bundle(coco_root, "data.images=missing")
    with pytest.raises(ConfigError, match=r"unknown COCO category 'persn' \(did you mean: person\?\)"):
        _bundle(coco_root, "data.category_map={persn: human}")
    with pytest.raises(ConfigError, match=r"data\.unmapped='ignor'.*background\|ignore"):
        _bundle(coco_root, "data.unmapped=ignor")
    with pytest.raises(ConfigError, match=r"data\.ignore_index=2 is a class id"):
        _bundle(coco_root, "data.ignore_index=2")
    (coco_root / "empty").mkdir()
    with pytest.raises(DataError, match=r"none of the 4 images of .*ann\.json is in .*empty"):
        _bundle(coco_root, "data.images=empty")


def test_panoptic_png_folder_missing(tmp_path: Path) -> None:
    root = make_panoptic(tmp_path / "pan")
    with pytest.raises(DataError, match=r"panoptic PNG folder not found: .*nowhere; set data\.panoptic_masks="):
        _bundle(root, "data.panoptic_masks=nowhere", ann="annotations/panoptic_val.json")
    (root / "annotations" / "panoptic_val" / "000001.png").unlink()
    b = _bundle(root, ann="annotations/panoptic_val.json")
    with pytest.raises(DataError, match=r"panoptic PNG not found: .*000001\.png"):
        b.labeled.mask("000001")


def test_cli_data_check(coco_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dtlabel.cli import main

    args = ["data", "check", "data=coco", f"data.root={coco_root}", "data.annotations=ann.json", "data.images=imgs", "-q"]
    # the json lists an image that is not on disk: reported as a problem (exit 2, one line)
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image listed in ann.json but not found" in err and "000004.jpg" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["labeled"] > 0 and len(summary["problems"]) == 1
    (coco_root / "imgs" / "000004.jpg").parent.mkdir(exist_ok=True)
    Image.new("RGB", (32, 24)).save(coco_root / "imgs" / "000004.jpg")
    assert main([*args, "--out", str(tmp_path / "run2")]) == 0
