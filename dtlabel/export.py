"""Pseudo-labels of a synthesize run in the formats annotation tools import (``dtlabel export``).

Every format gets the images (``images/<key>.png``, ``key = f"{index:08d}"``) and the labels of the
kept samples, in index order, so an export is the same bytes for the same run and options:

- ``png``: ``masks/<key>.png`` (class ids, mode L) + ``classes.json``: the ``data=folder`` layout,
  so ``data=folder data.root=EXPORT`` reads the pseudo-labels back pixel for pixel.
- ``coco``: ``annotations.json``, instance-style COCO with RLE masks (pycocotools). One annotation
  per connected component (8-connected) of each class but class 0 (the background, left
  unannotated); category ``k`` is class ``k`` of the head. Each annotation keeps the image's
  ``score`` and its own ``uncertainty`` (mean of the stored map over its pixels, a fraction of
  ``ln C``). Components do not overlap, so ``data=coco`` and ``annToMask`` give the masks back
  exactly, up to the components that ``min_area`` drops (they become background).
- ``cvat``: CVAT's "Segmentation mask 1.1" import archive ``segmentation_mask_1.1.zip``:
  ``labelmap.txt`` (``name:r,g,b::``), ``ImageSets/Segmentation/default.txt``,
  ``SegmentationClass/<key>.png`` (a colour per class) and ``SegmentationObject/<key>.png`` (a
  colour per component); upload ``images/`` as the task's images first.
- ``labelstudio``: ``tasks.json`` of Label Studio tasks with ``predictions`` (``polygonlabels``:
  the outer contour of each component in percent of the image size, so holes are not kept) and
  ``label_config.xml`` for the project; the image URLs are ``image_url_prefix + images/<key>.png``.

``drop_uncertain`` leaves out that fraction of the most uncertain images (as ``SynthSet`` does);
``min_area`` drops components smaller than that many pixels (background in png/cvat too, so every
format says the same thing).
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

from dtlabel.errors import ConfigError
from dtlabel.io import write_json, write_text
from dtlabel.report import palette

FORMATS = ("coco", "png", "cvat", "labelstudio")


def components(label: np.ndarray, num_classes: int, min_area: int) -> list[tuple[int, np.ndarray]]:
    """``[(class, bool mask)]``: the 8-connected components of every class but 0, largest first
    within a class, those under ``min_area`` pixels left out."""
    out = []
    for c in range(1, num_classes):
        region = (label == c).astype(np.uint8)
        if not region.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        for k in sorted(range(1, n), key=lambda k: (-stats[k, cv2.CC_STAT_AREA], k)):
            if stats[k, cv2.CC_STAT_AREA] >= min_area:
                out.append((c, comp == k))
    return out


def kept_label(label: np.ndarray, parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The label with the dropped components (``min_area``) set to background."""
    out = np.zeros_like(label)
    for c, mask in parts:
        out[mask] = c
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class Exporter:
    """Writes one format into ``folder`` (a fresh temporary folder); ``add`` each sample, then ``close``."""

    def __init__(self, fmt: str, folder: Path, class_names: list[str], image_url_prefix: str = "/data/local-files/?d=",
                 model_version: str = "dtlabel") -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
        self.fmt, self.folder, self.names = fmt, Path(folder), list(class_names)
        self.prefix, self.model_version = image_url_prefix, model_version
        self.colors = palette(len(self.names))
        (self.folder / "images").mkdir(parents=True)
        if fmt == "png":
            (self.folder / "masks").mkdir()
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []
        self.zip_entries: list[tuple[str, bytes]] = []

    def add(self, sample: dict[str, Any], min_area: int) -> None:
        key, image, label = sample["key"], sample["image"], sample["label"]
        h, w = label.shape
        name = f"images/{key}.png"
        (self.folder / name).write_bytes(_png_bytes(image))
        parts = components(label, len(self.names), min_area)
        if self.fmt == "png":
            (self.folder / "masks" / f"{key}.png").write_bytes(_png_bytes(kept_label(label, parts)))
        elif self.fmt == "coco":
            self._coco(sample, key, name, h, w, parts)
        elif self.fmt == "cvat":
            self._cvat(key, label, parts)
        else:
            self._labelstudio(sample, name, h, w, parts)

    def _coco(self, sample: dict[str, Any], key: str, name: str, h: int, w: int,
              parts: list[tuple[int, np.ndarray]]) -> None:
        from pycocotools import mask as mask_utils

        image_id = int(sample["index"]) + 1
        self.images.append({"id": image_id, "file_name": Path(name).name, "width": w, "height": h,
                            "dtlabel_score": sample["score"], "dtlabel_source": sample.get("file")})
        for c, mask in parts:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": c, "iscrowd": 0,
                "segmentation": rle, "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "score": sample["score"], "uncertainty": round(float(sample["uncertainty"][mask].mean()), 6),
            })

    def _cvat(self, key: str, label: np.ndarray, parts: list[tuple[int, np.ndarray]]) -> None:
        cls = self.colors[kept_label(label, parts)]
        obj = np.zeros((*label.shape, 3), np.uint8)
        for k, (_, mask) in enumerate(parts, start=1):
            obj[mask] = (k * 67 % 256, k * 131 % 256, k * 197 % 256 or 1)  # a distinct non-black colour per instance
        self.zip_entries += [(f"SegmentationClass/{key}.png", _png_bytes(cls)),
                             (f"SegmentationObject/{key}.png", _png_bytes(obj))]
        self.images.append({"key": key})

    def _labelstudio(self, sample: dict[str, Any], name: str, h: int, w: int,
                     parts: list[tuple[int, np.ndarray]]) -> None:
        result = []
        for c, mask in parts:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for contour in contours:
                pts = contour.reshape(-1, 2)
                if len(pts) < 3:
                    continue
                result.append({
                    "id": f"{sample['key']}-{len(result)}", "type": "polygonlabels", "from_name": "label",
                    "to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0,
                    "value": {"points": [[round(100 * x / w, 4), round(100 * y / h, 4)] for x, y in pts.tolist()],
                              "polygonlabels": [self.names[c]]},
                })
        confidence = round(1.0 - float(sample["score"]), 6)  # Label Studio's score: higher = more confident
        self.tasks.append({"data": {"image": f"{self.prefix}{name}", "dtlabel_index": int(sample["index"]),
                                    "dtlabel_source": sample.get("file")},
                           "predictions": [{"model_version": self.model_version, "score": confidence,
                                            "result": result}]})

    def close(self) -> dict[str, Any]:
        """Write the format's index files; returns what the run descriptor records."""
        if self.fmt == "png":
            write_json(self.folder / "classes.json", {"classes": self.names})
            return {"images": len(list((self.folder / "masks").iterdir()))}
        if self.fmt == "coco":
            write_json(self.folder / "annotations.json", {
                "info": {"description": "dtlabel pseudo-labels", "version": "1"},
                "images": self.images, "annotations": self.annotations,
                "categories": [{"id": c, "name": n, "supercategory": "dtlabel"} for c, n in enumerate(self.names) if c > 0],
                "dtlabel": {"background": self.names[0], "annotation": "one per 8-connected component of each class"},
            })
            return {"images": len(self.images), "annotations": len(self.annotations)}
        if self.fmt == "cvat":
            labelmap = "# label:color_rgb:parts:actions\n" + "".join(
                f"{n}:{','.join(str(int(v)) for v in self.colors[c])}::\n" for c, n in enumerate(self.names))
            listing = "".join(f"{im['key']}\n" for im in self.images)
            entries = [("labelmap.txt", labelmap.encode()), ("ImageSets/Segmentation/default.txt", listing.encode()),
                       *self.zip_entries]
            with zipfile.ZipFile(self.folder / "segmentation_mask_1.1.zip", "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in entries:
                    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same bytes for the same export
                    z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            return {"images": len(self.images)}
        labels = "".join(f'    <Label value="{n}"/>\n' for n in self.names[1:])
        write_text(self.folder / "label_config.xml", '<View>\n  <Image name="image" value="$image"/>\n'
                   f'  <PolygonLabels name="label" toName="image">\n{labels}  </PolygonLabels>\n</View>\n')
        write_text(self.folder / "tasks.json", json.dumps(self.tasks, indent=1) + "\n")
        return {"tasks": len(self.tasks), "polygons": sum(len(t["predictions"][0]["result"]) for t in self.tasks)}
