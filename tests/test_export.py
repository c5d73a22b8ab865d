"""dtlabel export: each format reloads with the same masks (pycocotools, data=coco, data=folder,
CVAT's colour masks; Label Studio's polygons up to their outlines), deterministically."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("export")
    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    assert main(["train-head", *TINY, "--labels", "8", "--teacher", str(teacher), "data.n_test=4",
                 "--out", str(root / "head")]) == 0
    assert main(["synthesize", *TINY, "--n", "6", "--teacher", str(teacher), "--head", str(root / "head"),
                 "--out", str(root / "synth")]) == 0
    return root / "synth"


@pytest.fixture(scope="module")
def labels(synth: Path) -> dict[str, np.ndarray]:
    from dtlabel.synth import SynthSet

    return {s["key"]: s["label"] for s in SynthSet(synth)}


def _export(synth: Path, out: Path, fmt: str, *extra: str) -> Path:
    assert main(["export", str(synth), "--format", fmt, *TINY, *extra, "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["format"] == fmt
    return out / fmt


def test_png_reloads_as_a_folder_data_set_pixel_for_pixel(synth: Path, labels: dict, tmp_path: Path) -> None:
    from dtlabel.config import compose
    from dtlabel.data import build_data

    folder = _export(synth, tmp_path / "png", "png")
    bundle = build_data(compose("data_check", ["data=folder", f"data.root={folder}"]).data)
    assert sorted(bundle.labeled.ids) == sorted(labels)
    assert all(np.array_equal(bundle.labeled.mask(k), labels[k]) for k in labels)


def test_coco_reloads_through_pycocotools_and_data_coco(synth: Path, labels: dict, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    from dtlabel.config import compose
    from dtlabel.data import build_data

    folder = _export(synth, tmp_path / "coco", "coco")
    coco = COCO(str(folder / "annotations.json"))
    names = json.loads((synth / "manifest.json").read_text())["class_names"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == names[1:]
    for img in coco.loadImgs(coco.getImgIds()):
        key = Path(img["file_name"]).stem
        drawn = np.zeros_like(labels[key])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert 0 <= ann["uncertainty"] <= 1 and ann["score"] == img["dtlabel_score"]
            drawn[coco.annToMask(ann).astype(bool)] = ann["category_id"]
        assert np.array_equal(drawn, labels[key])
    bundle = build_data(compose("data_check", ["data=coco", f"data.root={folder}", "data.annotations=annotations.json",
                                               "data.images=images", f"data.background={names[0]}"]).data)
    assert all(np.array_equal(bundle.labeled.mask(i), labels[Path(bundle.labeled.describe(i)).stem])
               for i in bundle.labeled.ids)


def test_min_area_drops_small_components_in_every_format(synth: Path, labels: dict, tmp_path: Path) -> None:
    from dtlabel.export import components

    coco = json.loads((_export(synth, tmp_path / "c", "coco", "min_area=20") / "annotations.json").read_text())
    assert coco["annotations"] and min(a["area"] for a in coco["annotations"]) >= 20
    png = _export(synth, tmp_path / "p", "png", "min_area=20")
    for key, label in labels.items():
        mask = np.asarray(Image.open(png / "masks" / f"{key}.png"))
        small = [m for c, m in components(label, 4, 0) if m.sum() < 20]
        assert all((mask[m] == 0).all() for m in small)


def test_cvat_archive_decodes_to_the_labels(synth: Path, labels: dict, tmp_path: Path) -> None:
    folder = _export(synth, tmp_path / "cvat", "cvat")
    with zipfile.ZipFile(folder / "segmentation_mask_1.1.zip") as z:
        rows = [ln.split(":") for ln in z.read("labelmap.txt").decode().splitlines() if not ln.startswith("#")]
        colours = {tuple(int(v) for v in r[1].split(",")): k for k, r in enumerate(rows)}
        assert z.read("ImageSets/Segmentation/default.txt").decode().split() == sorted(labels)
        for key, label in labels.items():
            rgb = np.asarray(Image.open(io.BytesIO(z.read(f"SegmentationClass/{key}.png"))))
            decoded = np.vectorize(lambda *c: colours[c])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
            assert np.array_equal(decoded, label)
    again = _export(synth, tmp_path / "cvat2", "cvat")
    assert (again / "segmentation_mask_1.1.zip").read_bytes() == (folder / "segmentation_mask_1.1.zip").read_bytes()


def test_labelstudio_polygons_cover_the_labels(synth: Path, labels: dict, tmp_path: Path) -> None:
    import cv2

    folder = _export(synth, tmp_path / "ls", "labelstudio")
    tasks = json.loads((folder / "tasks.json").read_text())
    names = json.loads((synth / "manifest.json").read_text())["class_names"]
    assert "<PolygonLabels" in (folder / "label_config.xml").read_text() and len(tasks) == len(labels)
    agree = []
    for task in tasks:
        key = Path(task["data"]["image"]).stem
        drawn = np.zeros_like(labels[key])
        for r in task["predictions"][0]["result"]:
            pts = np.array([[x * r["original_width"] / 100, y * r["original_height"] / 100]
                            for x, y in r["value"]["points"]]).round().astype(np.int32)
            cv2.fillPoly(drawn, [pts], names.index(r["value"]["polygonlabels"][0]))
        agree.append((drawn == labels[key]).mean())
    assert np.mean(agree) > 0.8  # outlines: holes and one-pixel slivers are not kept


def test_export_input_errors(synth: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli("export", synth, "--format", "yolo", "--out", tmp_path / "a")
    assert code == 2 and "expected one of coco, png, cvat, labelstudio" in err
    code, _, err = cli("export", "--format", "png", "--out", tmp_path / "b")
    assert code == 2 and "needs RUN" in err
    code, _, err = cli("export", tmp_path / "none", "--out", tmp_path / "c")
    assert code == 2 and "not found" in err
