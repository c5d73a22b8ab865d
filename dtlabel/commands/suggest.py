"""``dtlabel suggest --head H --n K [--images DIR | data=...] --out RUN``: which images to label next.

Candidates are the images of ``--images DIR``, or the data set's training pool without the head's
labeled and validation images (only their pixels are read, never their masks). Ranking:
:mod:`dtlabel.suggest` (``strategy=typical``, the default: the most typical image of each unlabeled
k-means cluster of teacher descriptors; ``k-center``: k-center greedy weighted by the head's
uncertainty, from the head's labeled images; ``random``: the baseline). Writes
``suggestions.csv`` / ``suggestions.json`` (rank, name, score, distance, uncertainty, why),
``contact_sheet.png`` (the images with their current pseudo-labels) and, for a data set,
``label_ids.txt``: the head's labels plus the suggestions, for ``train-head
label_ids=RUN/label_ids.txt`` once they are labeled.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from dtlabel.data import build_data
from dtlabel.data.transforms import to_tensor
from dtlabel.device import select_device
from dtlabel.errors import ConfigError, DataError
from dtlabel.heads.reading import TeacherFeatures, open_head_with_teacher
from dtlabel.io import write_json, write_text
from dtlabel.labeling import ImageList, resized
from dtlabel.report import overlay, save_grid
from dtlabel.runs import Run, read_run
from dtlabel.suggest import random_order, rank_candidates, read_candidates

log = logging.getLogger(__name__)
STRATEGIES = ("typical", "k-center", "random")


def _pool(cfg: DictConfig, head: Any, bundle: Any) -> tuple[ImageList, list[str]]:
    """The candidate images (an ``--images`` folder, or the data set's training pool without the
    head's labeled and validation images) and the head's labeled ids (the centres, same data set only)."""
    same_data = head.meta.get("data") in (None, bundle.name) and bundle.labeled is not None
    labeled = list(head.meta.get("label_ids") or []) if same_data else []
    if cfg.inputs.get("images"):
        from dtlabel.data.folder import list_images

        folder = Path(str(cfg.inputs.images)).expanduser()
        files = list_images(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"--images {folder}: no images found (recursively)")
        return ImageList.of_files(files, folder), labeled
    if not same_data:
        raise ConfigError(f"--head was trained on data set '{head.meta.get('data')}', not '{bundle.name}': pass "
                          "its data=... or --images DIR")
    held = set(labeled) | set(head.meta.get("val_ids") or [])
    return ImageList.of_source(bundle.labeled, [i for i in bundle.splits.get("train", []) if i not in held]), labeled


def _write(run: Run, cfg: DictConfig, rows: list[dict[str, Any]], labeled: list[str], n_pool: int,
           n_centres: int) -> None:
    """suggestions.csv / .json and (data-set pools) label_ids.txt: the old labels plus the suggested."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(run.path / "suggestions.csv", buf.getvalue())
    write_json(run.path / "suggestions.json", {"head": str(cfg.inputs.head), "k": len(rows), "pool": n_pool,
                                               "labeled_centres": n_centres, "suggestions": rows,
                                               "strategy": str(cfg.strategy), "random_seed": int(cfg.random_seed),
                                               "uncertainty_weight": float(cfg.uncertainty_weight)})
    if not cfg.inputs.get("images"):
        write_text(run.path / "label_ids.txt", "".join(f"{i}\n" for i in sorted({*labeled, *(r["name"] for r in rows)})))


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    if not cfg.inputs.get("head"):
        raise ConfigError("suggest needs --head DIR (a finished train-head run)")
    if cfg.get("n") is None or int(cfg.n) < 1:
        raise ConfigError("suggest needs --n K >= 1: how many images to suggest")
    k, strategy = int(cfg.n), str(cfg.strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy}: must be one of {', '.join(STRATEGIES)}")
    desc = read_run(str(cfg.inputs.head), "train-head", "--head")
    device = select_device(cfg.device)
    teacher_dir = cfg.inputs.get("teacher") or desc.get("teacher")
    if not teacher_dir:
        raise ConfigError("suggest needs --teacher DIR (the head's run does not record its teacher)")
    head, teacher = open_head_with_teacher(str(cfg.inputs.head), str(teacher_dir), cfg.teacher, device, str(cfg.amp))
    size = tuple(int(s) for s in (head.meta.get("data_size") or cfg.data.size))
    bundle = build_data(cfg.data)
    pool, labeled = _pool(cfg, head, bundle)
    if k > len(pool.names):
        raise ConfigError(f"--n {k}: the pool holds only {len(pool.names)} candidate images")
    feats = TeacherFeatures(teacher)
    seed, bs = int(head.meta.get("seed", cfg.seed)), int(cfg.batch_size)
    progress = not getattr(args, "quiet", False)
    # the random baseline reads only its K draws (in draw order); the ranking reads the whole pool
    index = random_order(len(pool.names), k, int(cfg.random_seed)) if strategy == "random" else list(range(len(pool.names)))
    cands = read_candidates([pool.names[i] for i in index], lambda j: to_tensor(resized(pool.read(index[j]), size)), head,
                            feats, seed, size, bs, progress)
    centres = np.zeros((0, cands.features.shape[1]))
    if labeled:
        centres = read_candidates(labeled, lambda i: to_tensor(resized(bundle.labeled.image(labeled[i]), size)), head,
                                  feats, seed, size, bs, progress).features
    picks, whys = rank_candidates(strategy, cands.features, cands.uncertainty, centres, k,
                                  float(cfg.uncertainty_weight), int(cfg.random_seed))
    rows = [{"rank": p.rank, "name": cands.names[p.index], "score": round(p.score, 6), "distance": round(p.distance, 6),
             "uncertainty": round(p.uncertainty, 6), "why": w} for p, w in zip(picks, whys)]
    _write(run, cfg, rows, labeled, len(pool.names), len(centres))
    n_sheet = min(k, int(cfg.contact_sheet))
    if n_sheet > 0:
        cells = [overlay(resized(pool.read(index[p.index]), size), cands.labels[p.index], head.num_classes, 0.5)
                 for p in picks[:n_sheet]]
        save_grid(run.path / "contact_sheet.png", [cells[r:r + 6] for r in range(0, len(cells), 6)],
                  class_names=head.meta.get("class_names"),
                  suptitle=f"suggest ({strategy}): the first {n_sheet} of {k}, with the head's current pseudo-labels")
    log.info("suggested (%s) %d of %d images (%d labeled images as centres): %s", strategy, k, len(pool.names), len(centres),
             ", ".join(r["name"] for r in rows[:5]) + (" ..." if k > 5 else ""))
    return {"k": k, "pool": len(pool.names), "strategy": strategy, "suggestions": "suggestions.csv",
            "label_ids": "label_ids.txt" if not cfg.inputs.get("images") else None,
            "uncertainty_weight": float(cfg.uncertainty_weight)}
