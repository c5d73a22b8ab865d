"""Folder data sets: ``images/`` + ``masks/`` (PNG index masks, same stem), and unlabeled folders."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dtlabel.data.base import ImageSource, LabeledSource
from dtlabel.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


# EXIF orientation values that rotate or mirror the stored pixels (1 = as stored)
_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3) uint8`` RGB as a viewer shows it: the EXIF orientation applied
    (phone photos are often stored sideways), 16-bit and 32-bit grayscale scaled by their type's range
    (``I;16``: value / 257). A corrupt, unreadable or unsupported file raises DataError."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in _HIGH_BIT_MODES:
                return _high_bit_to_rgb(np.asarray(im), im.mode, path)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc.__class__.__name__}; re-export or remove the file") from None


def _high_bit_to_rgb(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A high-bit-depth grayscale array at 8 bits by its type's range: 16-bit (and 32-bit integer
    values within 0..65535) / 257, float values within [0, 1] x 255; anything else is refused."""
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F":
        if lo < 0 or hi > 1:
            raise DataError(f"image {path} is a float image with values in [{lo:g}, {hi:g}]; dtlabel reads float images "
                            "in [0, 1]: save it as 8- or 16-bit")
        scaled = a * 255.0
    else:
        if lo < 0 or hi > 65535:
            raise DataError(f"image {path} is a {mode} image with values in [{lo:g}, {hi:g}], beyond 16 bits; save it "
                            "as 8- or 16-bit")
        scaled = a / 257.0
    g = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def image_notes(path: Path) -> list[str]:
    """What :func:`read_image` changes in a file as it reads it, from its header alone: ``"rotated"``
    (an EXIF orientation other than 1) and ``"scaled"`` (a high-bit-depth image). For ``data check``."""
    notes: list[str] = []
    try:
        with Image.open(path) as im:
            if int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1) != 1:
                notes.append("rotated")
            if im.mode in _HIGH_BIT_MODES:
                notes.append("scaled")
    except (OSError, SyntaxError, ValueError, TypeError):
        pass  # read_image reports unreadable files
    return notes


def read_mask(path: Path) -> np.ndarray:
    """Decode a single-channel index PNG to ``(H, W)`` integers (uint8 or int32), with the EXIF
    orientation applied as for its image."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("L", "P"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int32)
            raise DataError(
                f"mask {path} has mode {im.mode}; expected a single-channel index PNG (mode L or P) of class ids"
            )
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {exc.__class__.__name__}; re-export or remove the file") from None


def list_images(root: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not p.name.startswith("."))


def load_class_names(root: Path, classes: Sequence[str] | None, key: str = "classes") -> tuple[list[str], int | None]:
    """Class names from the config, or from ``root/classes.json`` (a list, or a dict with ``key``).

    Returns ``(names, ignore_index or None)``.
    """
    if classes:
        return [str(c) for c in classes], None
    path = root / "classes.json"
    if not path.is_file():
        raise DataError(f"no class names for {root}: add classes.json (a list of names) or set data.classes=[...]")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, list):
        return [str(c) for c in data], None
    if isinstance(data, dict) and isinstance(data.get(key), list):
        ignore = data.get("ignore_index")
        return [str(c) for c in data[key]], (int(ignore) if ignore is not None else None)
    keys = ", ".join(k for k, v in data.items() if isinstance(v, list)) if isinstance(data, dict) else ""
    raise DataError(f"{path} has no list '{key}' of class names (lists found: {keys or 'none'}); set data.classes_key")


class FolderLabeledSource(LabeledSource):
    """``root/images/<stem>.<ext>`` with ``root/masks/<stem>.png``. Ids are stems."""

    def __init__(self, root: Path, images: str = "images", masks: str = "masks", class_names: Sequence[str] = (),
                 ignore_index: int = 255, recursive: bool = False) -> None:
        self.root = Path(root)
        self.image_dir = self.root / images
        self.mask_dir = self.root / masks
        for what, d in (("images", self.image_dir), ("masks", self.mask_dir)):
            if not d.is_dir():
                raise DataError(f"{what} folder not found: {d}; a labeled folder needs {images}/ and {masks}/ "
                                f"(set data.images / data.masks if they are named differently)")
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self._images: dict[str, Path] = {}
        for p in list_images(self.image_dir, recursive):
            stem = p.relative_to(self.image_dir).with_suffix("").as_posix()
            self._images.setdefault(stem, p)
        self._masks = {p.relative_to(self.mask_dir).with_suffix("").as_posix(): p
                       for p in list_images(self.mask_dir, recursive) if p.suffix.lower() == ".png"}
        self.unmatched_images = sorted(set(self._images) - set(self._masks))
        self.unmatched_masks = sorted(set(self._masks) - set(self._images))
        self._ids = sorted(set(self._images) & set(self._masks))
        if not self._ids:
            raise DataError(f"no image/mask pairs in {self.root}: {len(self._images)} images in {self.image_dir}, "
                            f"{len(self._masks)} PNG masks in {self.mask_dir}, none with the same stem")
        if self.unmatched_images:
            log.warning("%d images in %s have no mask (e.g. %s); they are skipped",
                        len(self.unmatched_images), self.image_dir, self.unmatched_images[0])

    @property
    def ids(self) -> list[str]:
        return self._ids

    def problems(self) -> list[str]:
        return ([f"image without mask: {self._images[i]}" for i in self.unmatched_images]
                + [f"mask without image: {self._masks[i]}" for i in self.unmatched_masks])

    def describe(self, id_: str) -> str:
        return str(self._images.get(id_, id_))

    def image(self, id_: str) -> np.ndarray:
        return read_image(self._images[id_])

    def file(self, id_: str) -> Path | None:
        return self._images.get(id_)

    def mask(self, id_: str) -> np.ndarray:
        return read_mask(self._masks[id_])

    def mask_path(self, id_: str) -> Path:
        return self._masks[id_]


class FolderImageSource(ImageSource):
    """Any images under one or more folders (recursive). Ids are paths relative to their folder,
    prefixed with the folder's name when there are several folders."""

    def __init__(self, roots: Sequence[Path], recursive: bool = True) -> None:
        self.roots = [Path(r) for r in roots]
        self._files: dict[str, Path] = {}
        for root in self.roots:
            if not root.is_dir():
                raise DataError(f"image folder not found: {root}")
            prefix = f"{root.name}/" if len(self.roots) > 1 else ""
            for p in list_images(root, recursive):
                self._files[prefix + p.relative_to(root).as_posix()] = p
        if not self._files:
            exts = "/".join(e.lstrip(".") for e in IMAGE_EXTS[:4])
            raise DataError(f"no images ({exts}) found in {', '.join(map(str, self.roots))}")
        self._ids = sorted(self._files)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def describe(self, id_: str) -> str:
        return str(self._files[id_])

    def image(self, id_: str) -> np.ndarray:
        return read_image(self._files[id_])

    def path(self, id_: str) -> Path:
        return self._files[id_]

    def file(self, id_: str) -> Path | None:
        return self._files.get(id_)


class SubsetImageSource(ImageSource):
    """The images of some ids of another source (e.g. the labeled training pool's RGB)."""

    def __init__(self, source: ImageSource, ids: Sequence[str], prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        self._map = {prefix + i: i for i in ids}
        self._ids = sorted(self._map)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def describe(self, id_: str) -> str:
        return self.source.describe(self._map[id_])

    def image(self, id_: str) -> np.ndarray:
        return self.source.image(self._map[id_])

    def file(self, id_: str) -> Path | None:
        return self.source.file(self._map[id_])


class ConcatImageSource(ImageSource):
    """Several image sources as one; ids must not collide (give sources distinct prefixes)."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self._owner: dict[str, ImageSource] = {}
        for s in sources:
            for i in s.ids:
                self._owner[i] = s
        self._ids = sorted(self._owner)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def describe(self, id_: str) -> str:
        return self._owner[id_].describe(id_)

    def image(self, id_: str) -> np.ndarray:
        return self._owner[id_].image(id_)

    def file(self, id_: str) -> Path | None:
        return self._owner[id_].file(id_)
