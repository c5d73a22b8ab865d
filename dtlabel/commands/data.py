"""``dtlabel data check`` and ``dtlabel data preview``."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from typing import Any

from omegaconf import DictConfig

from dtlabel import seeds
from dtlabel.data import build_data, data_size
from dtlabel.data.check import check_bundle
from dtlabel.data.transforms import build_transform
from dtlabel.errors import ConfigError, DataError
from dtlabel.io import write_json
from dtlabel.report import colorize, overlay, save_grid
from dtlabel.runs import Run

log = logging.getLogger(__name__)


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only: a check takes seconds, and where stderr is a file or a pipe
    the bars' carriage returns would only surround the one error line."""
    return not args.quiet and sys.stderr.isatty()


def check(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    from dtlabel.synth.check import is_synth_run

    if is_synth_run(cfg.data.get("root")):  # data.root=<synthesize run folder>
        return _check_synth(run, cfg, args)
    bundle = build_data(cfg.data, announce=False)  # the report's first line says the same
    rep = check_bundle(bundle, progress=_bars(args))
    _report(run, rep, int(cfg.max_problems), bundle.name)
    return {"data": bundle.name, "labeled": rep.labeled, "unlabeled": rep.unlabeled, "problems": 0}


def _check_synth(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    from dtlabel.synth.check import check_synth

    rep = check_synth(str(cfg.data.root), progress=_bars(args))
    _report(run, rep, int(cfg.max_problems), str(cfg.data.root))
    return {"data": "synthesize", "root": str(cfg.data.root), "samples": rep.count, "shards": rep.shards, "problems": 0}


def preview(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    bundle = build_data(cfg.data)
    split, n = str(cfg.split), int(cfg.n)
    if n < 1:
        raise ConfigError(f"n={n}: the preview needs at least one sample")
    tf = build_transform(data_size(cfg.data), train=False)
    if split == "unlabeled":
        if bundle.unlabeled is None:
            raise DataError(f"data set {bundle.name} has no unlabeled images")
        ids = bundle.unlabeled.ids
    else:
        if split not in bundle.splits:
            raise ConfigError(f"split={split}: expected one of {', '.join([*bundle.splits, 'unlabeled'])}")
        ids = bundle.splits[split]
        if not ids:
            raise DataError(f"split '{split}' of {bundle.name} is empty")
    chosen = sorted(random.Random(seeds.preview(int(cfg.seed))).sample(list(ids), min(n, len(ids))))
    rows, cols = [], 8
    cells = []
    for id_ in chosen:
        if split == "unlabeled":
            cells.append(tf(image=bundle.unlabeled.image(id_))["image"])
            continue
        src = bundle.labeled
        out = tf(image=src.image(id_), mask=src.mask(id_))
        img, mask = out["image"], out["mask"]
        cells.append(overlay(img, mask, src.num_classes, float(cfg.alpha), src.ignore_index))
        cells.append(colorize(mask, src.num_classes, src.ignore_index))
    for k in range(0, len(cells), cols):
        rows.append(cells[k:k + cols])
    path = save_grid(run.path / "preview.png", rows,
                     titles=None if split == "unlabeled" else ["overlay", "mask"] * (cols // 2),
                     class_names=None if split == "unlabeled" else bundle.class_names,
                     suptitle=f"{bundle.name} / {split}: {len(chosen)} samples")
    log.info("wrote %s", path)
    write_json(run.path / "ids.json", chosen)
    return {"data": bundle.name, "split": split, "ids": chosen, "preview": path.name}


def _report(run: Run, rep: Any, max_problems: int, what: str) -> None:
    """Print a check's table and its first ``max_problems`` problems, write ``summary.json``, and
    refuse (one line, exit 2) when it found any: the same ending for a data set and a synth run."""
    print(rep.table())
    for p in rep.problems[:max_problems]:
        print(f"  problem: {p}")
    if len(rep.problems) > max_problems:
        print(f"  ... and {len(rep.problems) - max_problems} more (see summary.json)")
    write_json(run.path / "summary.json", rep.to_dict())
    if rep.problems:
        raise DataError(f"data check found {len(rep.problems)} problem(s) in {what}; first: {rep.problems[0]}")
