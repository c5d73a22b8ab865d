#!/usr/bin/env python
"""Convert the Clothing Co-Parsing (CCP) release into dtlabel's labeled-folder layout.

Input (``--src``, the original release, e.g. a clone of ``bearpaw/clothing-co-parsing``)::

    photos/NNNN.jpg                      2098 photos
    annotations/pixel-level/NNNN.mat     1004 files, variable ``groundtruth``: (H, W) labels 0..58
    annotations/image-level/NNNN.mat     1094 files, variable ``tags``: (n, 1) labels 0..58
    label_list.mat                       variable ``label_list``: 1x59 cell of names, 0 = 'null'

Output (``--out``)::

    labeled/images/NNNN.jpg              photos that have pixel labels
    labeled/masks/NNNN.png               fine labels, uint8 0..58
    labeled/masks_coarse8/NNNN.png       8 grouped classes, uint8 0..7
    unlabeled/images/NNNN.jpg            photos without pixel labels
    unlabeled/image_level_tags.json      [{"id": "NNNN", "tags": [names...]}, ...]
    classes.json                         fine_classes, coarse_classes, coarse_groups, fine_to_coarse
    LICENSE                              copied from --src when present

Everything is scaled to ``--width`` pixels wide (default 256; the height keeps the aspect ratio,
rounded to an even number of pixels): photos with LANCZOS, saved as JPEG quality 92; masks with
NEAREST, saved as single-channel PNG. Every file is written to a temporary name and then renamed,
so an interrupted run can simply be started again: files already present are skipped (unless
``--overwrite``).

Usage::

    python datasets/ccp/prepare.py --src clothing-co-parsing --out data/ccp [--width 256]

Needs numpy, pillow and scipy only (tqdm, when installed, shows progress).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import scipy.io
from PIL import Image

# The 59 fine labels of label_list.mat, index = label value in the .mat files (0 = 'null').
FINE_CLASSES: list[str] = [
    "null", "accessories", "bag", "belt", "blazer", "blouse", "bodysuit", "boots", "bra",
    "bracelet", "cape", "cardigan", "clogs", "coat", "dress", "earrings", "flats", "glasses",
    "gloves", "hair", "hat", "heels", "hoodie", "intimate", "jacket", "jeans", "jumper",
    "leggings", "loafers", "necklace", "panties", "pants", "pumps", "purse", "ring", "romper",
    "sandals", "scarf", "shirt", "shoes", "shorts", "skin", "skirt", "sneakers", "socks",
    "stockings", "suit", "sunglasses", "sweater", "sweatshirt", "swimwear", "t-shirt", "tie",
    "tights", "top", "vest", "wallet", "watch", "wedges",
]  # fmt: skip

# The 8 coarse classes (index = value in masks_coarse8) and which fine labels each one groups.
COARSE_GROUPS: dict[str, list[str]] = {
    "background": ["null"],
    "skin": ["skin"],
    "hair": ["hair"],
    "upper_clothes": [
        "blazer", "blouse", "bodysuit", "cardigan", "coat", "hoodie", "jacket", "jumper",
        "shirt", "sweater", "sweatshirt", "t-shirt", "top", "vest", "cape", "bra", "intimate",
    ],
    "lower_clothes": [
        "jeans", "leggings", "pants", "shorts", "skirt", "stockings", "tights", "socks",
        "panties",
    ],
    "full_body": ["dress", "romper", "suit", "swimwear"],
    "footwear": [
        "boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers",
        "wedges",
    ],
    "accessories": [
        "accessories", "bag", "belt", "bracelet", "earrings", "glasses", "gloves", "hat",
        "necklace", "purse", "ring", "scarf", "sunglasses", "tie", "wallet", "watch",
    ],
}  # fmt: skip
COARSE_CLASSES: list[str] = list(COARSE_GROUPS)

JPEG_QUALITY = 92
DEFAULT_WIDTH = 256
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")

T = TypeVar("T")


class PrepareError(Exception):
    """A problem with the input or the options; printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# reading the release


def check_src(src: Path) -> None:
    """Fail with a clear message unless ``src`` looks like the CCP release."""
    hint = "expected the Clothing Co-Parsing release with photos/ and annotations/pixel-level/"
    if not src.is_dir():
        raise PrepareError(f"--src {src}: no such folder ({hint})")
    for sub in ("photos", "annotations", "annotations/pixel-level"):
        if not (src / sub).is_dir():
            raise PrepareError(f"--src {src}: missing {sub}/ ({hint})")


def _cell_to_str(cell: object) -> str:
    """One entry of a MATLAB cell array of strings, as loaded by scipy, to a Python str."""
    arr = np.asarray(cell)
    if arr.dtype.kind in "US":
        return "".join(str(x) for x in arr.ravel()).strip()
    if arr.dtype == object and arr.size == 1:
        return _cell_to_str(arr.ravel()[0])
    if arr.size == 0:
        return ""
    raise PrepareError(f"label_list.mat: cannot read a label name from {arr!r}")


def read_label_list(path: Path) -> list[str]:
    """The fine label names of ``label_list.mat`` (index = label value)."""
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a broken file
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    if "label_list" not in data:
        raise PrepareError(f"{path}: no variable 'label_list' (found {_variables(data)})")
    return [_cell_to_str(c) for c in np.asarray(data["label_list"]).ravel()]


def _variables(data: dict[str, object]) -> list[str]:
    return sorted(k for k in data if not k.startswith("__"))


def read_groundtruth(path: Path, num_classes: int) -> np.ndarray:
    """``groundtruth`` of one pixel-level .mat file as ``(H, W) uint8`` in ``0..num_classes-1``."""
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    if "groundtruth" not in data:
        raise PrepareError(f"{path}: no variable 'groundtruth' (found {_variables(data)})")
    gt = np.asarray(data["groundtruth"])
    if gt.ndim != 2 or gt.size == 0:
        raise PrepareError(f"{path}: 'groundtruth' has shape {gt.shape}, expected (H, W)")
    if gt.dtype.kind == "f" and not np.all(np.mod(gt, 1) == 0):
        raise PrepareError(f"{path}: 'groundtruth' holds non-integer values")
    lo, hi = int(gt.min()), int(gt.max())
    if lo < 0 or hi >= num_classes:
        raise PrepareError(
            f"{path}: label values {lo}..{hi} outside 0..{num_classes - 1} (label_list has "
            f"{num_classes} names)"
        )
    return gt.astype(np.uint8)


def read_tags(path: Path, names: list[str]) -> list[str]:
    """Tag names of one image-level .mat file, in file order (``tags`` holds 0-based labels)."""
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    if "tags" not in data:
        raise PrepareError(f"{path}: no variable 'tags' (found {_variables(data)})")
    out = []
    for value in np.asarray(data["tags"]).ravel():
        idx = int(value)
        if not 0 <= idx < len(names):
            raise PrepareError(f"{path}: tag {idx} outside 0..{len(names) - 1}")
        out.append(names[idx])
    return out


# ----------------------------------------------------------------------------------------------
# conversion helpers


def target_size(size: tuple[int, int], width: int) -> tuple[int, int]:
    """Output ``(width, height)`` for an input ``(w, h)``: aspect kept, height rounded to even.

    ``width <= 0`` keeps the input size.
    """
    w, h = size
    if width <= 0:
        return w, h
    height = max(2, 2 * round(h * width / (2 * w)))
    return width, height


def fine_to_coarse(fine_classes: list[str]) -> dict[str, int]:
    """Coarse class index of every fine name, from ``COARSE_GROUPS``."""
    lookup = {fine: i for i, group in enumerate(COARSE_GROUPS.values()) for fine in group}
    missing = [name for name in fine_classes if name not in lookup]
    if missing:
        raise PrepareError(
            f"label_list.mat has names with no coarse group: {missing} (known: CCP's 59 labels)"
        )
    return {name: lookup[name] for name in fine_classes}


def coarse_lut(fine_classes: list[str]) -> np.ndarray:
    """A 256-entry table mapping fine label values to coarse ones (unused entries: 255)."""
    mapping = fine_to_coarse(fine_classes)
    lut = np.full(256, 255, dtype=np.uint8)
    for i, name in enumerate(fine_classes):
        lut[i] = mapping[name]
    return lut


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``, so ``path`` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_jpeg(image: Image.Image, path: Path) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY))


def save_png(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    write_atomic(path, lambda tmp: img.save(tmp, format="PNG", optimize=True))


def load_photo(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise PrepareError(f"{path}: cannot read image ({exc})") from exc


def remove_stale_temps(folders: Iterable[Path]) -> None:
    """Delete temporary files an interrupted run left behind."""
    for folder in folders:
        if folder.is_dir():
            for p in folder.glob(".*.tmp*"):
                p.unlink()


def progress(items: Sequence[T], desc: str) -> Iterator[T]:
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty())


# ----------------------------------------------------------------------------------------------
# the conversion


def convert_labeled(
    stem: str, src: Path, out: Path, width: int, names: list[str], lut: np.ndarray
) -> bool:
    """Write image, fine and coarse mask of ``stem``; True if mask and photo sizes differed."""
    photo = load_photo(src / "photos" / f"{stem}.jpg")
    gt = read_groundtruth(src / "annotations" / "pixel-level" / f"{stem}.mat", len(names))
    size = target_size(photo.size, width)
    mismatch = (gt.shape[1], gt.shape[0]) != photo.size
    if size != photo.size:
        photo = photo.resize(size, Image.Resampling.LANCZOS)
    if (gt.shape[1], gt.shape[0]) != size:
        gt = np.asarray(Image.fromarray(gt, mode="L").resize(size, Image.Resampling.NEAREST))
    save_jpeg(photo, out / "labeled" / "images" / f"{stem}.jpg")
    save_png(gt, out / "labeled" / "masks" / f"{stem}.png")
    save_png(lut[gt], out / "labeled" / "masks_coarse8" / f"{stem}.png")
    return mismatch


def convert_unlabeled(stem: str, src: Path, out: Path, width: int) -> None:
    photo = load_photo(src / "photos" / f"{stem}.jpg")
    size = target_size(photo.size, width)
    if size != photo.size:
        photo = photo.resize(size, Image.Resampling.LANCZOS)
    save_jpeg(photo, out / "unlabeled" / "images" / f"{stem}.jpg")


def classes_json(names: list[str]) -> str:
    payload = {
        "fine_classes": names,
        "coarse_classes": COARSE_CLASSES,
        "coarse_groups": COARSE_GROUPS,
        "fine_to_coarse": fine_to_coarse(names),
    }
    return json.dumps(payload, indent=1)


def load_names(src: Path) -> list[str]:
    """Fine label names from ``label_list.mat``; the built-in list when the file is absent."""
    path = src / "label_list.mat"
    if not path.is_file():
        print(f"note: {path} not found; using the built-in list of CCP's 59 labels")
        return list(FINE_CLASSES)
    names = read_label_list(path)
    if names != FINE_CLASSES:
        print(f"warning: {path} differs from CCP's usual 59 labels; using the names it holds")
    return names


def run(src: Path, out: Path, width: int, overwrite: bool) -> dict[str, int]:
    """Convert ``src`` into ``out``; returns counts of written and skipped files."""
    check_src(src)
    names = load_names(src)
    if len(names) > 255:
        raise PrepareError(f"label_list.mat has {len(names)} names; uint8 masks hold at most 255")
    lut = coarse_lut(names)

    photos = {p.stem: p for p in (src / "photos").glob("*.jpg")}
    annotated = {p.stem for p in (src / "annotations" / "pixel-level").glob("*.mat")}
    if not photos:
        raise PrepareError(f"--src {src}: photos/ holds no .jpg files")
    no_photo = sorted(annotated - photos.keys())
    if no_photo:
        print(f"warning: {len(no_photo)} pixel annotations have no photo, skipped: {no_photo[:5]}")
    labeled = sorted(annotated & photos.keys())
    unlabeled = sorted(photos.keys() - annotated)

    folders = [
        out / "labeled" / "images",
        out / "labeled" / "masks",
        out / "labeled" / "masks_coarse8",
        out / "unlabeled" / "images",
    ]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps([out, out / "unlabeled", *folders])

    counts = {"labeled": 0, "labeled_skipped": 0, "unlabeled": 0, "unlabeled_skipped": 0}
    mismatched = 0
    for stem in progress(labeled, "labeled"):
        outputs = [
            out / "labeled" / "images" / f"{stem}.jpg",
            out / "labeled" / "masks" / f"{stem}.png",
            out / "labeled" / "masks_coarse8" / f"{stem}.png",
        ]
        if not overwrite and all(p.is_file() for p in outputs):
            counts["labeled_skipped"] += 1
            continue
        mismatched += convert_labeled(stem, src, out, width, names, lut)
        counts["labeled"] += 1
    if mismatched:
        print(f"warning: {mismatched} masks differ in size from their photo; resized to match")

    for stem in progress(unlabeled, "unlabeled"):
        target = out / "unlabeled" / "images" / f"{stem}.jpg"
        if not overwrite and target.is_file():
            counts["unlabeled_skipped"] += 1
            continue
        convert_unlabeled(stem, src, out, width)
        counts["unlabeled"] += 1

    # Small metadata files are rebuilt on every run (cheap, and always consistent).
    tag_dir = src / "annotations" / "image-level"
    tags = [
        {"id": stem, "tags": read_tags(tag_dir / f"{stem}.mat", names)}
        for stem in unlabeled
        if (tag_dir / f"{stem}.mat").is_file()
    ]
    write_text_atomic(out / "unlabeled" / "image_level_tags.json", json.dumps(tags))
    write_text_atomic(out / "classes.json", classes_json(names))
    counts["tagged"] = len(tags)

    licence = next((src / n for n in LICENSE_NAMES if (src / n).is_file()), None)
    if licence is not None:
        write_atomic(out / "LICENSE", lambda tmp: shutil.copyfile(licence, tmp))
    else:
        print("note: no LICENSE file in --src; CCP is released under Apache-2.0 (see README)")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Convert the Clothing Co-Parsing release into dtlabel's labeled-folder layout.",
    )
    parser.add_argument("--src", type=Path, required=True, help="the CCP release folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--width",
        type=int,
        default=DEFAULT_WIDTH,
        help=f"output width in pixels, aspect kept (default {DEFAULT_WIDTH}; 0 = original size)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite files that already exist"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return int(exc.code or 0)
    if args.width < 0:
        print(f"error: --width must be >= 0 (0 keeps the original size), got {args.width}",
              file=sys.stderr)
        return 2
    try:
        counts = run(args.src, args.out, args.width, args.overwrite)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: labeled {counts['labeled']} new, {counts['labeled_skipped']} kept; "
        f"unlabeled {counts['unlabeled']} new, {counts['unlabeled_skipped']} kept; "
        f"{counts['tagged']} tag lists"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
