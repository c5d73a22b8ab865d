"""``dtlabel data check``: validate every sample of a data set and summarise it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.transforms import check_pair
from dtlabel.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    name: str
    labeled: int = 0
    unlabeled: int = 0          # unlabeled images that are not also labeled
    pool: int = 0               # the unlabeled pool as the teacher sees it (may include labeled RGB)
    splits: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    pixel_share: list[float] = field(default_factory=list)     # fraction of labeled pixels per class
    image_share: list[float] = field(default_factory=list)     # fraction of images containing the class
    ignored_share: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)         # "WxH" -> count (most common first)
    rotated: int = 0            # images read with their EXIF orientation applied (stored sideways or mirrored)
    scaled: int = 0             # high-bit-depth images scaled to 8 bits by their type's range
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def table(self) -> str:
        pool = f" (unlabeled pool {self.pool}, with labeled images' RGB)" if self.pool != self.unlabeled else ""
        lines = [f"data set {self.name}: {self.labeled} labeled, {self.unlabeled} unlabeled images{pool}",
                 "splits: " + ", ".join(f"{k} {v}" for k, v in self.splits.items())]
        if self.sizes:
            top = list(self.sizes.items())[:3]
            lines.append("image sizes (WxH): " + ", ".join(f"{s} x{n}" for s, n in top)
                         + (f", ... ({len(self.sizes)} distinct)" if len(self.sizes) > 3 else ""))
        if self.class_names:
            lines.append(f"{'id':>3}  {'class':<20} {'pixels %':>9} {'images %':>9}")
            for i, n in enumerate(self.class_names):
                lines.append(f"{i:>3}  {n:<20} {100 * self.pixel_share[i]:>9.2f} {100 * self.image_share[i]:>9.1f}")
            lines.append(f"ignored pixels: {100 * self.ignored_share:.2f}%")
        if self.rotated:
            lines.append(f"EXIF orientation: {self.rotated} images are stored rotated or mirrored and are read as "
                         "viewers show them (masks must match that view)")
        if self.scaled:
            lines.append(f"bit depth: {self.scaled} images have more than 8 bits per value and are scaled to 8 bits by "
                         "their type's range (16-bit: value / 257)")
        lines.append(f"problems: {len(self.problems)}")
        return "\n".join(lines)


def check_bundle(bundle: DataBundle, progress: bool = True) -> CheckReport:
    """Read every image and mask once; count classes and collect problems (never stops early)."""
    rep = CheckReport(name=bundle.name, splits={k: len(v) for k, v in bundle.splits.items()})
    sizes: dict[str, int] = {}
    src = bundle.labeled
    if src is not None:
        rep.class_names = list(src.class_names)
        c = src.num_classes
        pix = np.zeros(c, dtype=np.int64)
        imgs = np.zeros(c, dtype=np.int64)
        ignored = total = 0
        for id_ in tqdm(src.ids, desc="labeled", disable=not progress, leave=False):
            try:
                image, mask = src.image(id_), src.mask(id_)
                check_pair(image, mask, c, src.ignore_index, src.describe(id_), src.describe_mask(id_))
            except DataError as exc:
                rep.problems.append(str(exc))
                continue
            key = f"{image.shape[1]}x{image.shape[0]}"
            sizes[key] = sizes.get(key, 0) + 1
            _count_notes(rep, src, id_)
            counts = np.bincount(mask[mask != src.ignore_index].ravel().astype(np.int64), minlength=c)[:c]
            pix += counts
            imgs += counts > 0
            ignored += int((mask == src.ignore_index).sum())
            total += mask.size
        rep.labeled = len(src)
        rep.pixel_share = (pix / max(1, pix.sum())).round(6).tolist()
        rep.image_share = (imgs / max(1, len(src))).round(6).tolist()
        rep.ignored_share = round(ignored / max(1, total), 6)
        rep.problems.extend(src.problems())
        for i, n in enumerate(rep.class_names):
            if rep.image_share and rep.image_share[i] == 0:
                rep.problems.append(f"class {i} '{n}' never appears in any mask")
    if bundle.unlabeled is not None:
        labeled_ids = set(src.ids) if src is not None else set()
        n_from_labeled = 0
        for id_ in tqdm(bundle.unlabeled.ids, desc="unlabeled", disable=not progress, leave=False):
            if id_.startswith("labeled/") and id_[len("labeled/"):] in labeled_ids:
                n_from_labeled += 1
                continue  # the labeled pool's RGB was read above
            try:
                image = bundle.unlabeled.image(id_)
            except DataError as exc:
                rep.problems.append(str(exc))
                continue
            key = f"{image.shape[1]}x{image.shape[0]}"
            sizes[key] = sizes.get(key, 0) + 1
            _count_notes(rep, bundle.unlabeled, id_)
        rep.pool = len(bundle.unlabeled)
        rep.unlabeled = rep.pool - n_from_labeled
    rep.sizes = dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
    return rep


def _count_notes(rep: CheckReport, source: object, id_: str) -> None:
    """Count what the image reader changed in ``id_``'s file (EXIF rotation, bit depth)."""
    from dtlabel.data.folder import image_notes

    file = getattr(source, "file", None)
    path = file(id_) if callable(file) else None
    if path is not None:
        notes = image_notes(path)
        rep.rotated += "rotated" in notes
        rep.scaled += "scaled" in notes


def check_before_training(src: LabeledSource, parts: dict[str, Sequence[str]]) -> None:
    """Decode every image and mask a training command will use (``parts``: ``{"labeled": ids,
    "validation": ids, "test": ids}``) once, before it trains: a corrupt file, a mask of the wrong
    size or an out-of-range class id is one :class:`DataError` now, not a crash at step 700.
    Costs one decode per file (about a second for CCP's 50 + 20 + 200)."""
    n = sum(len(ids) for ids in parts.values())
    unlabeled: list[str] = []  # labeled images whose mask is all ignore_index: nothing to learn from
    for what, ids in parts.items():
        for id_ in ids:
            try:
                mask = src.mask(id_)
                check_pair(src.image(id_), mask, src.num_classes, src.ignore_index, src.describe(id_),
                           src.describe_mask(id_))
            except DataError as exc:
                raise DataError(f"{exc} (a {what} image, found before training by checking all {n} images it "
                                "uses; 'dtlabel data check' lists every problem of the data set)") from None
            if what == "labeled" and not bool((mask != src.ignore_index).any()):
                unlabeled.append(id_)
    labeled = list(parts.get("labeled") or [])
    if labeled and len(unlabeled) == len(labeled):
        shown = ", ".join(src.describe(i) for i in unlabeled[:3]) + (" ..." if len(unlabeled) > 3 else "")
        raise DataError(f"none of the {len(labeled)} labeled images has a labeled pixel: every mask is all "
                        f"{src.ignore_index} (ignore), e.g. {shown}; label them, or check data.ignore_index")
    if len(unlabeled) * 2 > len(labeled):
        log.warning("%d of the %d labeled images have no labeled pixel (their masks are all ignore_index %d), e.g. %s; "
                    "they teach nothing", len(unlabeled), len(labeled), src.ignore_index, src.describe(unlabeled[0]))
