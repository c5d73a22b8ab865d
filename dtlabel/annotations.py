"""Labels made in an annotation tool, back into a labeling set (``dtlabel import-labels``).

The inverse of :mod:`dtlabel.export` for the set ``synthesize --for-labeling`` writes
(:mod:`dtlabel.labeling_set`): each format's masks become ``RUN/masks/<key>.png`` (class ids,
mode L) and the class list ``RUN/classes.json`` (``{"classes": [...]}``, background first), the
``data=folder`` layout. Formats:

- ``cvat``: CVAT's "Segmentation mask 1.1" export (a ``.zip`` or its unpacked folder):
  ``labelmap.txt`` gives the classes in order with their colours, ``SegmentationClass/<key>.png`` a
  colour per pixel; a colour the label map does not list is one error line naming the file.
- ``labelstudio``: Label Studio's JSON export (a list of tasks); each task's image name gives the
  key, its newest annotation's ``polygonlabels`` are filled in order (later polygons on top) on the
  background. The classes come from ``--classes`` (background first) or the set's ``classes.json``.
- ``png``: a folder of ``<key>.png`` index masks and its ``classes.json``.

Only keys of the set are imported (a foreign image name is one line); images left unlabelled keep
no mask. The masks and ``classes.json`` are written atomically; a rerun replaces them.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from dtlabel.errors import ConfigError, DataError
from dtlabel.io import atomic_dir, read_json, write_json

FORMATS = ("cvat", "labelstudio", "png")


def import_labels(root: str | Path, fmt: str, source: str | Path, keys: list[str], size: tuple[int, int],
                  classes: list[str] | None = None) -> dict[str, Any]:
    """Read ``source`` (format ``fmt``) into ``root/masks`` + ``root/classes.json``; returns counts.

    ``keys``: the set's image keys; ``size``: its images' ``(H, W)`` (every mask must match)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise DataError(f"--from {source}: not found")
    try:
        if fmt == "cvat":
            names, masks = _cvat(source)
        elif fmt == "png":
            names, masks = _png(source)
        else:
            names = classes or _set_classes(root)
            masks = _labelstudio(source, names, size)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:  # a malformed export
        what = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise DataError(f"--from {source}: not a readable {fmt} export ({type(exc).__name__}: {what})") from None
    if not masks:
        raise DataError(f"--from {source}: no labelled image in it (an export of a task with annotations is needed); "
                        f"{root}/masks is left as it was")
    known = set(keys)
    foreign = sorted(k for k in masks if k not in known)
    if foreign:
        raise DataError(f"--from {source}: {len(foreign)} labelled image(s) are not samples of this set "
                        f"(e.g. {foreign[0]}); export the task made from {root}/images")
    for key, mask in masks.items():
        if mask.ndim != 2:
            raise DataError(f"--from {source}: the mask of {key} has {mask.shape[2]} channels; index masks are "
                            "single-channel PNGs of class ids")
        if mask.shape != tuple(size):
            raise DataError(f"--from {source}: the mask of {key} is {mask.shape[0]}x{mask.shape[1]}, the samples are "
                            f"{size[0]}x{size[1]}")
        if int(mask.max(initial=0)) >= len(names):
            raise DataError(f"--from {source}: the mask of {key} holds class {int(mask.max())}, the class list has "
                            f"{len(names)} ({', '.join(names)})")
    with atomic_dir(Path(root) / "masks") as tmp:
        for key, mask in sorted(masks.items()):
            Image.fromarray(mask.astype(np.uint8), mode="L").save(tmp / f"{key}.png", format="PNG")
    write_json(Path(root) / "classes.json", {"classes": names})
    return {"format": fmt, "labelled": len(masks), "unlabelled": len(keys) - len(masks), "classes": names}


def _set_classes(root: str | Path) -> list[str]:
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise ConfigError("import-labels --format labelstudio needs the class list: --classes background A B ... "
                          "(background first)")
    return _class_list(read_json(path, DataError), path)


def _class_list(obj: Any, path: Path) -> list[str]:
    """``classes.json`` as ``data=folder`` reads it: a list of names or ``{"classes": [...]}``."""
    names = obj.get("classes") if isinstance(obj, dict) else obj
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a list of class names or {{\"classes\": [...]}}")
    return names


def _read_entries(source: Path) -> dict[str, bytes]:
    """The files of a zip archive or a folder, by their relative POSIX path."""
    if source.is_dir():
        return {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    try:
        with zipfile.ZipFile(source) as z:
            return {name: z.read(name) for name in z.namelist() if not name.endswith("/")}
    except zipfile.BadZipFile:
        raise DataError(f"--from {source}: not a zip archive (CVAT's Segmentation mask 1.1 export)") from None


def _cvat(source: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    entries = _read_entries(source)
    if "labelmap.txt" not in entries:
        raise DataError(f"--from {source}: no labelmap.txt; expected CVAT's Segmentation mask 1.1 export")
    names, colours = [], {}
    for line in entries["labelmap.txt"].decode("utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, rgb = line.split(":")[:2]
        colours[tuple(int(v) for v in rgb.split(","))] = len(names)
        names.append(name)
    masks = {}
    for path, data in sorted(entries.items()):
        if not path.startswith("SegmentationClass/") or not path.endswith(".png"):
            continue
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        flat = rgb.reshape(-1, 3)
        found, inverse = np.unique(flat, axis=0, return_inverse=True)
        ids = []
        for colour in map(tuple, found.tolist()):
            if colour not in colours:
                raise DataError(f"--from {source}: {path} holds colour {colour}, which labelmap.txt does not list")
            ids.append(colours[colour])
        masks[Path(path).stem] = np.asarray(ids, np.uint8)[inverse.reshape(-1)].reshape(rgb.shape[:2])
    return names, masks


def _png(source: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    if not source.is_dir() or not (source / "classes.json").is_file():
        raise DataError(f"--from {source}: expected a folder of <key>.png index masks with its classes.json")
    names = _class_list(read_json(source / "classes.json", DataError), source / "classes.json")
    return names, {p.stem: np.asarray(Image.open(p)) for p in sorted(source.glob("*.png"))}


def _labelstudio(source: Path, names: list[str], size: tuple[int, int]) -> dict[str, np.ndarray]:
    try:
        tasks = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"--from {source}: not a Label Studio JSON export ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(tasks, list):
        raise DataError(f"--from {source}: not a Label Studio JSON export (a list of tasks expected)")
    h, w = size
    masks = {}
    for task in tasks:
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            continue
        key = Path(str(task.get("data", {}).get("image", ""))).stem.split("-")[-1]
        mask = np.zeros((h, w), np.uint8)
        for region in annotations[-1].get("result") or []:
            if region.get("type") != "polygonlabels":
                raise DataError(f"--from {source}: {key} holds a {region.get('type')!r} region; import-labels reads "
                                "polygons (PolygonLabels): label with polygons, or export masks as PNG")
            value = region.get("value") or {}
            for label in value.get("polygonlabels") or []:
                if label not in names:
                    raise DataError(f"--from {source}: label {label!r} of {key} is not in the class list "
                                    f"({', '.join(names)}); pass --classes")
                pts = np.array([[x * w / 100.0, y * h / 100.0] for x, y in value["points"]])
                cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], names.index(label))
        masks[key] = mask
    return masks
