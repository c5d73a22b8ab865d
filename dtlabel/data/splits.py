"""Splits (id lists, id ranges, list files) and the deterministic choice of N training labels."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import ListConfig

from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.errors import ConfigError, DataError

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def resolve_split(spec: object, ids: Sequence[str], root: Path | None, name: str) -> list[str]:
    """Turn a split spec into ids of ``ids``.

    ``spec`` is a list of ids, a string of numeric ranges and ids (``"0001-0804"``,
    ``"1-10,15"``), or a path to a text file with one id per line (relative to ``root``).
    """
    available = set(ids)
    if spec is None:
        return []
    if isinstance(spec, str):
        path = Path(spec) if Path(spec).is_absolute() or root is None else root / spec
        if spec.endswith(".txt") or path.is_file():
            if not path.is_file():
                raise DataError(f"split '{name}': list file not found: {path}")
            wanted = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        else:
            wanted = []
            for part in spec.split(","):
                m = _RANGE.match(part)
                if m:
                    lo, hi = int(m.group(1)), int(m.group(2))
                    if lo > hi:
                        raise ConfigError(f"split '{name}': range {part.strip()} is empty (start > end)")
                    wanted.extend(i for i in ids if i.isdigit() and lo <= int(i) <= hi)
                elif part.strip():
                    wanted.append(part.strip())
    elif isinstance(spec, (list, tuple, ListConfig)):
        wanted = [str(i) for i in spec]
    else:
        raise ConfigError(f"split '{name}'={spec!r}: expected a list of ids, a string of id ranges such as "
                          "\"0001-0804\" (quoted), or a .txt file of ids")
    missing = [i for i in wanted if i not in available]
    if missing:
        raise DataError(f"split '{name}': {len(missing)} ids not in the data set (e.g. '{missing[0]}')")
    if not wanted:
        raise DataError(f"split '{name}' selects no images: {spec!r}")
    return sorted(dict.fromkeys(wanted))


def labeled_ids(source: LabeledSource, pool: Sequence[str], n: int | None, seed: int,
                given: object = None) -> list[str]:
    """The N labeled images of a run: the seeded :func:`choose_labels`, or ``given`` (``label_ids=FILE``
    or a list: e.g. the ``label_ids.txt`` of a ``dtlabel suggest`` run, the old labels plus the
    suggested ones), ids of the training ``pool``; ``n`` (``--labels``), if given, must match."""
    if given is None:
        if n is None:
            raise ConfigError("--labels N or label_ids=FILE is needed: which labeled images to train on")
        return choose_labels(source, pool, n, seed)
    ids = resolve_split(given, pool, None, "label_ids")
    if n is not None and int(n) != len(ids):
        raise ConfigError(f"--labels {n}, but label_ids lists {len(ids)} images; pass one of the two")
    return ids


def class_presence(source: LabeledSource, ids: Sequence[str]) -> np.ndarray:
    """``(len(ids), num_classes)`` bool: which classes appear in each image's mask."""
    c = source.num_classes
    out = np.zeros((len(ids), c), dtype=bool)
    for k, i in enumerate(ids):
        m = source.mask(i)
        vals = np.unique(m)
        vals = vals[(vals >= 0) & (vals < c)]
        out[k, vals] = True
    return out


def choose_labels(source: LabeledSource, pool: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """Choose ``n`` ids of ``pool`` deterministically, covering rare classes first.

    The pool is shuffled with ``seed``; classes are visited from the rarest (fewest images) to the
    most common, and for each class not yet covered the first shuffled image containing it is
    taken; the rest is filled in shuffled order. Same inputs -> same ids, sorted.
    """
    pool = sorted(pool)
    if n < 1 or n > len(pool):
        raise ConfigError(f"--labels {n}: must be between 1 and the training pool size {len(pool)}")
    order = list(pool)
    random.Random(seed).shuffle(order)
    presence = class_presence(source, order)
    chosen: list[int] = []
    covered = np.zeros(presence.shape[1], dtype=bool)
    counts = presence.sum(0)
    for c in np.argsort(counts, kind="stable"):
        if len(chosen) >= n:
            break
        if counts[c] == 0 or covered[c]:
            continue
        k = int(np.flatnonzero(presence[:, c])[0])
        if k not in chosen:
            chosen.append(k)
            covered |= presence[k]
    for k in range(len(order)):
        if len(chosen) >= n:
            break
        if k not in chosen:
            chosen.append(k)
    return sorted(order[k] for k in chosen)


def validation_ids(splits: dict[str, list[str]], exclude: Sequence[str], n: int, seed: int) -> tuple[list[str], str]:
    """The validation slice of model selection and where it came from.

    The data set's ``val`` split if it has one, else the training pool; minus ``exclude`` (the
    labeled images, and those of the head that made the pseudo-labels); at most ``n`` ids drawn with
    ``seeds.validation(seed)``. Never the test split. Returns ``(sorted ids, origin)``.
    """
    from dtlabel import seeds

    if n <= 0:
        return [], "none"
    chosen = set(exclude)
    val = [i for i in splits.get("val") or [] if i not in chosen]  # disjoint even if splits overlap
    origin = "val split"
    if not val:
        val = [i for i in sorted(splits.get("train") or []) if i not in chosen]
        origin = "train pool minus the labels"
    if len(val) > n:
        val = random.Random(seeds.validation(seed)).sample(sorted(val), n)
    if not val:
        log.warning(
            "no validation image is left (every training image is a labeled one): the model of the last step is "
            "kept, not the best; use fewer --labels or give the data set a val split")
    return sorted(val), origin if val else "none (every training image is labeled)"


@dataclass
class LabelSplit:
    """The images one training run uses: its N labeled ids (drawn with ``label_seed``), the
    validation slice of model selection (and where it came from), the test split. ``record()`` is
    its ``labels.json``."""

    data: str
    label_seed: int
    label_ids: list[str]
    val_ids: list[str]
    val_from: str
    test_ids: list[str]
    pool_size: int

    def record(self) -> dict[str, object]:
        return {"n": len(self.label_ids) or None, "label_seed": self.label_seed, "ids": self.label_ids,
                "pool": "train", "pool_size": self.pool_size, "val_ids": self.val_ids, "val_from": self.val_from,
                "test_size": len(self.test_ids), "data": self.data}


def split_labels(bundle: DataBundle, source: LabeledSource, n: int | None, given: object, label_seed: int,
                 val_size: int, held: Sequence[str] = ()) -> LabelSplit:
    """The labeled ids (``n`` of the training split, or the ``given`` list; none when both are None),
    a validation slice disjoint from them and from ``held`` (the labels of the head that made a
    student's pseudo-labels), the test split; every file of the three decoded once
    (``check_before_training``) so a bad file is one error before training, not at step 700."""
    from dtlabel.data.check import check_before_training

    label_ids: list[str] = []
    if n is not None or given is not None:
        if not bundle.splits.get("train"):
            raise DataError(f"data set {bundle.name} has no training images for --labels; set data.splits.train")
        label_ids = labeled_ids(source, bundle.splits["train"], n, label_seed, given)
    val_ids, val_from = validation_ids(bundle.splits, [*label_ids, *held], int(val_size), label_seed)
    test_ids = list(bundle.splits["test"])
    check_before_training(source, {"labeled": label_ids, "validation": val_ids, "test": test_ids})
    return LabelSplit(bundle.name, label_seed, label_ids, val_ids, val_from, test_ids,
                      len(bundle.splits.get("train") or []))
