"""COCO instance or panoptic annotations as a semantic-segmentation source (``data=coco``).

The original json is read once; each image's semantic mask is drawn on demand:

* **instances** (``annotations[].segmentation``, polygons or RLE): the annotations of an image are
  drawn through ``pycocotools`` in order of decreasing ``area`` (so a small object lying on a large
  one stays visible); crowd regions (``iscrowd: 1``) of mapped categories become ``ignore_index``.
  Pixels covered by no annotation, and images with no annotations at all, are background.
* **panoptic** (``annotations[].segments_info`` + one PNG per image): segment ids are decoded from
  the PNG as ``R + 256 G + 256^2 B`` and mapped to classes; crowd segments of mapped categories and
  void pixels (id 0 or an id missing from ``segments_info``) become ``ignore_index``.

Classes: class 0 is ``data.background``; with ``data.category_map: null`` one class follows per
COCO category in ascending category id; with a map, the distinct target names in order of first
appearance (a target equal to the background name maps to class 0). Unmapped categories become
background or ``ignore_index`` (``data.unmapped``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.folder import read_image
from dtlabel.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

UNMAPPED = ("background", "ignore")
_CACHE_SIZE = 16


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read a COCO annotation json; raise DataError if it is missing, not JSON or not COCO."""
    if not path.is_file():
        raise DataError(f"COCO annotation json not found: {path}; set data.annotations=FILE (relative to data.root)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}; "
                        f"set data.annotations= to a COCO instances_*.json or panoptic_*.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc.__class__.__name__}; "
                        f"set data.annotations= to a COCO instances_*.json or panoptic_*.json") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("categories"), list)):
        raise DataError(f"{path} is not a COCO annotation json (no 'images' and 'categories' lists); "
                        f"set data.annotations= to a COCO instances_*.json or panoptic_*.json")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' is not a list; set data.annotations= to a COCO annotation json")
    return data


def is_panoptic(data: Mapping[str, Any]) -> bool:
    """True if the annotations are panoptic records (``segments_info`` + PNG ``file_name``)."""
    anns = data.get("annotations") or []
    return bool(anns) and isinstance(anns[0], dict) and "segments_info" in anns[0]


def class_table(categories: Sequence[Mapping[str, Any]], category_map: Mapping[str, Any] | None,
                background: str, unmapped: str, ignore_index: int) -> tuple[list[str], dict[int, int]]:
    """Class names and the lookup ``COCO category id -> class id`` (or ``ignore_index``)."""
    if unmapped not in UNMAPPED:
        raise ConfigError(f"data.unmapped={unmapped!r} is not valid{did_you_mean(str(unmapped), UNMAPPED)}; "
                          f"use one of: {'|'.join(UNMAPPED)}")
    try:
        cats = sorted(((int(c["id"]), str(c["name"])) for c in categories), key=lambda t: t[0])
    except (KeyError, TypeError, ValueError):
        raise DataError("COCO 'categories' entries need an integer 'id' and a 'name'") from None
    if category_map is None:
        return [background] + [name for _, name in cats], {cid: k + 1 for k, (cid, _) in enumerate(cats)}
    if not isinstance(category_map, Mapping) or not category_map:
        raise ConfigError("data.category_map must be a non-empty dict {coco category name: class name} or null")
    by_name = {name: cid for cid, name in cats}
    names = [background]
    target: dict[str, int] = {}
    for src, dst in category_map.items():
        src = str(src)
        if src not in by_name:
            raise ConfigError(f"data.category_map: unknown COCO category '{src}'{did_you_mean(src, by_name)}; "
                              f"names are the json's categories[].name values")
        if not isinstance(dst, str) or not dst:
            raise ConfigError(f"data.category_map.{src}: the target must be a class name, got {dst!r}")
        if dst not in names:
            names.append(dst)
        target[src] = names.index(dst)
    rest = 0 if unmapped == "background" else ignore_index
    return names, {cid: target.get(name, rest) for cid, name in cats}


class CocoLabeledSource(LabeledSource):
    """Images of a COCO json found on disk, with semantic masks drawn lazily from the annotations.

    Ids are the images' ``file_name`` without extension (``000000000139``).
    """

    def __init__(self, data: Mapping[str, Any], json_path: Path, image_dir: Path, class_names: Sequence[str],
                 cat_to_class: Mapping[int, int], ignore_index: int = 255, panoptic_dir: Path | None = None) -> None:
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir) if panoptic_dir is not None else None
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self._lut = dict(cat_to_class)
        self._is_panoptic = is_panoptic(data)
        small = self.num_classes <= 255 and 0 <= self.ignore_index <= 255
        self._dtype = np.uint8 if small else np.int32
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

        self._info: dict[str, dict[str, Any]] = {}
        self._paths: dict[str, Path] = {}
        missing: list[str] = []
        for img in data["images"]:
            try:
                name = str(img["file_name"])
                _ = (img["id"], int(img["height"]), int(img["width"]))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.json_path}: an 'images' entry lacks id/file_name/height/width: "
                                f"{str(img)[:80]}") from None
            id_ = Path(name).with_suffix("").as_posix()
            if id_ in self._info:
                log.warning("%s: two images with id %s; keeping the first", self.json_path, id_)
                continue
            path = self.image_dir / name
            if not path.is_file():
                missing.append(name)
                continue
            self._info[id_], self._paths[id_] = img, path

        self._coco = None
        self._panoptic: dict[Any, dict[str, Any]] = {}
        if self._is_panoptic:
            for ann in data.get("annotations") or []:
                self._panoptic[ann.get("image_id")] = ann
            unannotated = [i for i, img in self._info.items() if img["id"] not in self._panoptic]
            if unannotated:
                log.warning("%d images of %s have no panoptic record (e.g. %s); they are skipped",
                            len(unannotated), self.json_path, unannotated[0])
                for i in unannotated:
                    del self._info[i], self._paths[i]
        else:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress lines
                coco = COCO()
                coco.dataset = dict(data)
                coco.dataset.setdefault("annotations", [])
                try:
                    coco.createIndex()
                except (KeyError, TypeError) as exc:
                    raise DataError(f"{self.json_path}: malformed annotation (missing {exc}); "
                                    f"expected COCO instance annotations with id/image_id/segmentation") from None
            self._coco = coco

        self._ids = sorted(self._info)
        self._problems = [f"image listed in {self.json_path.name} but not found: {self.image_dir / m}" for m in missing]
        if self._is_panoptic:
            self._problems += [f"image without a panoptic record in {self.json_path.name}: {i}" for i in unannotated]
        if missing:
            log.warning("%d of %d images of %s are not in %s (e.g. %s); they are skipped",
                        len(missing), len(data["images"]), self.json_path.name, self.image_dir, missing[0])
        if not self._ids:
            example = f" (e.g. {missing[0]})" if missing else ""
            raise DataError(f"none of the {len(data['images'])} images of {self.json_path} is in {self.image_dir}"
                            f"{example}; set data.images=FOLDER (relative to data.root) to the image folder")

    def problems(self) -> list[str]:
        return list(self._problems)

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def kind(self) -> str:
        return "panoptic" if self._is_panoptic else "instances"

    def describe(self, id_: str) -> str:
        return str(self._paths.get(id_, id_))

    def image(self, id_: str) -> np.ndarray:
        return read_image(self._paths[id_])

    def mask(self, id_: str) -> np.ndarray:
        if id_ in self._cache:
            self._cache.move_to_end(id_)
            return self._cache[id_].copy()
        info = self._info[id_]
        m = self._panoptic_mask(info) if self._is_panoptic else self._instance_mask(info)
        self._cache[id_] = m
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return m.copy()

    def _class_of(self, cat_id: Any, where: str) -> int:
        try:
            return self._lut[int(cat_id)]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} of {self.json_path.name} refers to category_id {cat_id!r}, "
                            f"which is not in 'categories'; fix the json") from None

    def _instance_mask(self, info: Mapping[str, Any]) -> np.ndarray:
        h, w = int(info["height"]), int(info["width"])
        out = np.zeros((h, w), dtype=self._dtype)
        anns = list(self._coco.imgToAnns.get(info["id"], []))  # type: ignore[union-attr]

        def area(a: Mapping[str, Any]) -> float:
            try:
                return float(a["area"])
            except (KeyError, TypeError, ValueError):
                return 0.0

        anns.sort(key=lambda a: -area(a))  # stable: equal areas keep the json order
        for ann in anns:
            where = f"annotation {ann.get('id')} (image {info['file_name']})"
            cls = self._class_of(ann.get("category_id"), where)
            if ann.get("iscrowd") and cls != 0:
                cls = self.ignore_index
            try:
                region = self._coco.annToMask(ann).astype(bool)  # type: ignore[union-attr]
            except Exception as exc:  # pycocotools raises bare Exception/TypeError on bad polygons
                raise DataError(f"cannot decode the segmentation of {where} in {self.json_path.name}: "
                                f"{exc.__class__.__name__}; fix or remove the annotation") from None
            if region.shape != out.shape:
                raise DataError(f"segmentation of {where} is {region.shape[1]}x{region.shape[0]}, "
                                f"the image entry says {w}x{h}; fix the json")
            out[region] = cls
        return out

    def panoptic_path(self, id_: str) -> Path:
        ann = self._panoptic[self._info[id_]["id"]]
        name = ann.get("file_name") or Path(str(self._info[id_]["file_name"])).with_suffix(".png").name
        return self.panoptic_dir / str(name)  # type: ignore[operator]

    def _panoptic_mask(self, info: Mapping[str, Any]) -> np.ndarray:
        ann = self._panoptic[info["id"]]
        path = self.panoptic_path(Path(str(info["file_name"])).with_suffix("").as_posix())
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
        except FileNotFoundError:
            raise DataError(f"panoptic PNG not found: {path}; set data.panoptic_masks=FOLDER "
                            f"(relative to data.root) to the folder of the json's PNGs") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read panoptic PNG {path}: {exc.__class__.__name__}") from None
        seg = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        values, inverse = np.unique(seg, return_inverse=True)
        table: dict[int, int] = {}
        for s in ann.get("segments_info") or []:
            where = f"segment {s.get('id')} (image {info['file_name']})"
            cls = self._class_of(s.get("category_id"), where)
            if s.get("iscrowd") and cls != 0:
                cls = self.ignore_index
            table[int(s["id"])] = cls
        classes = np.array([table.get(int(v), self.ignore_index) for v in values], dtype=self._dtype)
        return classes[inverse.reshape(seg.shape)]


def build_coco(cfg: DictConfig, root: Path) -> DataBundle:
    """The ``data=coco`` bundle: labeled COCO source, splits and unlabeled pool (like ``data=folder``)."""
    from dtlabel.data import build_splits, unlabeled_pool

    root = Path(root)
    if not cfg.get("annotations"):
        raise ConfigError("data=coco needs data.annotations=FILE (the COCO json, relative to data.root)")
    json_path = root / str(cfg.annotations)
    image_dir = root / str(cfg.get("images") or "")
    if not cfg.get("images") or not image_dir.is_dir():
        raise DataError(f"COCO image folder not found: {image_dir}; set data.images=FOLDER (relative to data.root)")
    background = cfg.get("background")
    if background is None or str(background) == "":
        raise ConfigError("data.background must name class 0, e.g. data.background=background")
    ignore = cfg.get("ignore_index")
    ignore = 255 if ignore is None else int(ignore)
    raw_map = cfg.get("category_map")
    category_map = OmegaConf.to_container(raw_map) if isinstance(raw_map, DictConfig) else raw_map
    unmapped = str(cfg.get("unmapped") or "background")
    if unmapped not in UNMAPPED:  # validate before reading a possibly huge json
        raise ConfigError(f"data.unmapped={unmapped!r} is not valid{did_you_mean(unmapped, UNMAPPED)}; "
                          f"use one of: {'|'.join(UNMAPPED)}")

    data = load_coco_json(json_path)
    panoptic_dir = None
    if is_panoptic(data):
        pm = cfg.get("panoptic_masks")
        panoptic_dir = root / str(pm) if pm else json_path.parent / json_path.stem
        if not panoptic_dir.is_dir():
            raise DataError(f"panoptic PNG folder not found: {panoptic_dir}; set data.panoptic_masks=FOLDER "
                            f"(relative to data.root) to the folder of {json_path.name}'s PNGs")
    names, lut = class_table(data["categories"], category_map, str(background), unmapped, ignore)  # type: ignore[arg-type]
    if 0 <= ignore < len(names):
        raise ConfigError(f"data.ignore_index={ignore} is a class id (there are {len(names)} classes); "
                          f"use a value >= {len(names)}, e.g. 255")
    labeled = CocoLabeledSource(data, json_path, image_dir, names, lut, ignore, panoptic_dir)
    log.info("coco %s %s: %d images, %d classes", labeled.kind, json_path.name, len(labeled), len(names))

    splits = build_splits(cfg, labeled, root)
    unlabeled = unlabeled_pool(cfg, root, labeled, splits)
    return DataBundle(name=str(cfg.get("name", "coco")), labeled=labeled, unlabeled=unlabeled, splits=splits)
