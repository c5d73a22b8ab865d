"""Data sets as a config group: ``data=<name> data.root=PATH``.

``build_data(cfg.data)`` returns a :class:`DataBundle` (labeled source, unlabeled source, splits).
Kinds: ``folder`` (images/ + masks/; also ccp and camvid), ``images`` (unlabeled folder only),
``coco`` (instance or panoptic json), ``default`` (the generated default data set).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dtlabel.data.base import DataBundle, ImageSource, LabeledSource
from dtlabel.data.splits import choose_labels, resolve_split
from dtlabel.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

__all__ = ["DataBundle", "ImageSource", "LabeledSource", "build_data", "choose_labels", "DATA_KINDS"]


def _root(cfg: DictConfig) -> Path:
    try:
        root = cfg.root
    except MissingMandatoryValue:
        raise ConfigError(f"data={cfg.get('name', '?')} needs data.root=PATH (the data set folder)") from None
    if root is None or str(root) == "":
        raise ConfigError(f"data={cfg.get('name', '?')} needs data.root=PATH (the data set folder)")
    path = Path(str(root)).expanduser()
    if not path.exists():
        raise DataError(f"data.root not found: {path}; pass data.root=PATH to an existing folder")
    if not path.is_dir():
        raise DataError(f"data.root is not a folder: {path}")
    return path


def _build_folder(cfg: DictConfig) -> DataBundle:
    from dtlabel.data.folder import FolderLabeledSource, load_class_names

    root = _root(cfg)
    names, ignore_from_file = load_class_names(root, cfg.get("classes"), cfg.get("classes_key", "classes"))
    if cfg.get("ignore_index") is not None:
        ignore = int(cfg.ignore_index)
    else:
        ignore = int(ignore_from_file) if ignore_from_file is not None else 255
    labeled = FolderLabeledSource(root, cfg.images, cfg.masks, names, ignore, recursive=bool(cfg.get("recursive", False)))
    splits = build_splits(cfg, labeled, root)
    return DataBundle(name=str(cfg.name), labeled=labeled, unlabeled=unlabeled_pool(cfg, root, labeled, splits),
                      splits=splits)


def unlabeled_pool(cfg: DictConfig, root: Path, labeled: LabeledSource,
                   splits: dict[str, list[str]]) -> ImageSource | None:
    """The unlabeled pool: ``data.unlabeled`` folders plus the images of ``data.unlabeled_splits``
    (ids ``labeled/<id>``)."""
    from dtlabel.data.folder import ConcatImageSource, FolderImageSource, SubsetImageSource

    sources: list[ImageSource] = []
    extra = [root / str(d) for d in (cfg.get("unlabeled") or [])]
    if extra:
        sources.append(FolderImageSource(extra))
    for split in cfg.get("unlabeled_splits") or []:
        if splits.get(split):
            sources.append(SubsetImageSource(labeled, splits[split], prefix="labeled/"))
    return sources[0] if len(sources) == 1 else (ConcatImageSource(sources) if sources else None)


def build_splits(cfg: DictConfig, labeled: LabeledSource, root: Path) -> dict[str, list[str]]:
    """``data.splits`` resolved against ``labeled``; ``train`` defaults to every id not in val/test."""
    spec = cfg.get("splits") or {}
    splits = {name: resolve_split(spec.get(name), labeled.ids, root, name) for name in ("train", "val", "test")}
    if not spec.get("train"):
        taken = set(splits["val"]) | set(splits["test"])
        splits["train"] = [i for i in labeled.ids if i not in taken]
    overlap = set(splits["train"]) & set(splits["test"])
    if overlap:
        raise DataError(f"train and test splits share {len(overlap)} ids (e.g. '{sorted(overlap)[0]}'); fix data.splits")
    return splits


def _build_images(cfg: DictConfig) -> DataBundle:
    from dtlabel.data.folder import FolderImageSource

    root = _root(cfg)
    return DataBundle(name=str(cfg.name), labeled=None, unlabeled=FolderImageSource([root]), splits={})


def _build_default(cfg: DictConfig) -> DataBundle:
    from dtlabel.data.generated import build_default

    for key in ("seed", "n_unlabeled", "n_labeled", "n_val", "n_test"):
        if int(cfg[key]) < 0:
            raise ConfigError(f"data.{key}={cfg[key]} must be >= 0")
    if int(cfg.n_labeled) < 1 or int(cfg.n_test) < 1:
        raise ConfigError("data.n_labeled and data.n_test must be >= 1 for the default data set")
    from dtlabel.data.default import STYLES

    style = str(cfg.get("style") or "photo")
    if style not in STYLES:
        raise ConfigError(f"data.style={style}: expected one of {', '.join(STYLES)}")
    return build_default(int(cfg.seed), int(cfg.n_unlabeled), int(cfg.n_labeled), int(cfg.n_val),
                         int(cfg.n_test), list(cfg.size), style)


def _build_coco(cfg: DictConfig) -> DataBundle:
    from dtlabel.data.coco import build_coco

    return build_coco(cfg, _root(cfg))


DATA_KINDS: dict[str, Callable[[DictConfig], DataBundle]] = {
    "folder": _build_folder,
    "images": _build_images,
    "default": _build_default,
    "coco": _build_coco,
}


def build_data(cfg: DictConfig, announce: bool = True) -> DataBundle:
    """Build the data set described by the ``data`` config group (``announce``: log its counts; ``data
    check`` prints its own table instead)."""
    kind = str(cfg.get("kind", "folder"))
    if kind not in DATA_KINDS:
        raise ConfigError(f"unknown data.kind '{kind}'{did_you_mean(kind, DATA_KINDS)}; available: {', '.join(DATA_KINDS)}")
    bundle = DATA_KINDS[kind](cfg)
    pool = bundle.unlabeled.ids if bundle.unlabeled else []
    from_labeled = sum(1 for i in pool if i.startswith("labeled/"))
    (log.info if announce else log.debug)("data %s: %d labeled, %d unlabeled images (unlabeled pool %d, with labeled images' RGB); splits %s",
             bundle.name, len(bundle.labeled) if bundle.labeled else 0, len(pool) - from_labeled, len(pool),
             {k: len(v) for k, v in bundle.splits.items()})
    return bundle


def data_size(cfg: DictConfig) -> tuple[int, int]:
    """The working resolution ``(H, W)`` of the data config."""
    size = OmegaConf.to_container(cfg.size) if cfg.get("size") is not None else None
    if not size or len(size) != 2 or any(int(s) < 8 for s in size):  # type: ignore[arg-type]
        raise ConfigError(f"data.size must be [H, W] with both >= 8, got {size}")
    return int(size[0]), int(size[1])  # type: ignore[index]


def pseudo_label_pool(bundle: DataBundle, held_out: Iterable[str]) -> tuple[ImageSource, list[str], int]:
    """``(source, ids, n_left_out)``: the images ``synthesize data=...`` labels. The label-free pool
    (the unlabeled images and the labeled training pool's RGB; never validation or test) without
    ``held_out``, ids of the labeled source (the head's labeled and validation images): their
    pseudo-labels would double a real label or leak into model selection."""
    source = label_free_pool(bundle, include_labeled=True)
    if source is None:
        raise DataError(f"data set {bundle.name} has no unlabeled pool to pseudo-label; pass --images DIR or --n N")
    held = set(held_out)
    drop = held | {f"labeled/{i}" for i in held}
    ids = [i for i in source.ids if i not in drop]
    if not ids:
        raise DataError(f"data set {bundle.name}: every pool image is a labeled or validation image of the head")
    return source, ids, len(source.ids) - len(ids)


def label_free_pool(bundle: DataBundle, include_labeled: bool = True) -> ImageSource | None:
    """The images a label-free stage trains on (fit-teacher, pretrain): the unlabeled pool plus, with
    ``include_labeled``, the images (never the masks) of the labeled training pool, ids prefixed
    ``labeled/``; never the validation or test images. None if there is no image at all."""
    from dtlabel.data.folder import ConcatImageSource, SubsetImageSource

    source = bundle.unlabeled
    if include_labeled and bundle.labeled is not None and bundle.splits.get("train"):
        have = set(source.ids) if source is not None else set()
        extra = [i for i in bundle.splits["train"] if f"labeled/{i}" not in have]
        if extra:
            lab = SubsetImageSource(bundle.labeled, extra, prefix="labeled/")
            source = lab if source is None else ConcatImageSource([source, lab])
    return source if source is not None and len(source) else None
