"""``dtlabel demo``: the whole chain on the embedded default data, then a results table.

Stages, each an ordinary dtlabel command run in its own process with its own run folder inside the
demo's folder (so each has its config, log and ``run.json``, and can be inspected or reused):

1. ``unlabeled/``: the default data's unlabeled pool written out as PNG files (the "pile of
   unlabeled photos" a user would have);
2. ``teacher/``: ``fit-teacher`` on that pool;
3. ``head/``: ``train-head --labels N`` on the teacher's features;
4. ``synth/``: ``synthesize --images unlabeled/``: the head's pseudo-labels of the real unlabeled
   images encoded through the teacher (the source that works with a CPU-trained teacher);
5. ``student/``: ``train-student --synth synth/ --labels N`` (pseudo-labels + the N real labels);
6. ``scratch/``: ``train-student --labels N`` (the baseline: the same student on the N labels only);
7. ``eval-student/``: ``dtlabel eval --student student/`` (overlays, per-class bars, confusion);
8. ``results.md`` / ``results.png``: test mIoU and per-class IoU of head, student and scratch.

A stage whose folder already holds ``run.json`` is skipped, so ``dtlabel demo --resume --out DIR``
continues an interrupted demo where it stopped; an unfinished stage continues with its own
``--resume``. The stage settings live in ``configs/demo/<preset>.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from dtlabel.data import build_data
from dtlabel.errors import ConfigError, RunError
from dtlabel.io import atomic_dir, read_json, write_json, write_text
from dtlabel.report import results_plot, results_table
from dtlabel.runs import DESCRIPTOR, Run

log = logging.getLogger(__name__)

ROWS = (("head", "head (teacher features)"), ("student", "student (pseudo-labels + real labels)"),
        ("scratch", "scratch student (real labels only)"))


def _list(cfg: DictConfig, key: str) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if not OmegaConf.is_list(value):
        raise ConfigError(f"demo.{key} must be a list of key=value overrides, got {value!r}")
    return [str(v) for v in value]


def _stage(run: Run, name: str, argv: list[str], common: list[str], quiet: bool) -> Path:
    """Run ``dtlabel <argv> --out RUN/name`` in a child process unless it already finished."""
    out = run.path / name
    if (out / DESCRIPTOR).is_file():
        log.info("[%s] already done: %s", name, out)
        return out
    cmd = [sys.executable, "-m", "dtlabel.cli", *argv, *common, "--out", str(out)]
    if out.is_dir() and any(out.iterdir()):
        cmd.append("--resume")
    if quiet:
        cmd.append("-q")
    shown = " ".join(["dtlabel", *cmd[3:]])
    log.info("[%s] %s", name, shown)
    t0 = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise RunError(f"demo stage '{name}' failed (exit {code}); see {out}; fix it and rerun with --resume --out {run.path}")
    log.info("[%s] done in %.0fs", name, time.time() - t0)
    return out


def _export_unlabeled(run: Run, cfg: DictConfig, count: int, quiet: bool) -> Path:
    """Write ``count`` images of the default data's unlabeled pool as PNG files (atomically)."""
    target = run.path / "unlabeled"
    if target.is_dir():
        return target
    bundle = build_data(cfg.data)
    pool = bundle.unlabeled
    if pool is None or len(pool) == 0:
        raise ConfigError("demo needs a data set with an unlabeled pool")
    ids = list(pool.ids)[: count if count > 0 else None]
    h, w = (int(s) for s in cfg.data.size)
    with atomic_dir(target) as tmp:
        for id_ in tqdm(ids, desc="unlabeled images", disable=quiet):
            img = Image.fromarray(pool.image(id_))
            if img.size != (w, h):
                img = img.resize((w, h), Image.BICUBIC)
            img.save(tmp / f"{id_}.png")
    log.info("wrote %d unlabeled images to %s", len(ids), target)
    return target


def _metrics(folder: Path) -> dict[str, Any]:
    return read_json(folder / "metrics.json", RunError, fix="rerun dtlabel demo with --resume")


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    dc = cfg.demo
    labels = int(cfg.labels if cfg.get("labels") is not None else dc.labels)
    if labels < 1:
        raise ConfigError(f"--labels {labels}: must be >= 1")
    quiet = bool(getattr(args, "quiet", False))
    common = [f"--seed={int(cfg.seed)}", f"--device={cfg.device}"]
    data = [f"data.size=[{int(cfg.data.size[0])},{int(cfg.data.size[1])}]"]
    t0 = time.time()

    images = _export_unlabeled(run, cfg, int(dc.unlabeled), quiet)
    teacher = _stage(run, "teacher", ["fit-teacher", "--images", str(images), *data, *_list(dc, "teacher")],
                     common, quiet)
    head = _stage(run, "head", ["train-head", "--labels", str(labels), "--teacher", str(teacher), *data,
                                *_list(dc, "head")], common, quiet)
    synth = _stage(run, "synth", ["synthesize", "--images", str(images), "--teacher", str(teacher), "--head", str(head),
                                  *data, *_list(dc, "synth")], common, quiet)
    student = _stage(run, "student", ["train-student", "--synth", str(synth), "--labels", str(labels), *data,
                                      *_list(dc, "student")], common, quiet)
    scratch = _stage(run, "scratch", ["train-student", "--labels", str(labels), *data, *_list(dc, "scratch")],
                     common, quiet)
    _stage(run, "eval-student", ["eval", "--student", str(student), *data], common, quiet)

    folders = {"head": head, "student": student, "scratch": scratch}
    rows = [(label, _metrics(folders[key])) for key, label in ROWS]
    class_names = list(rows[0][1]["per_class_iou"].keys())
    table = results_table(rows, class_names)
    write_text(run.path / "results.md", (
        f"# dtlabel demo results (default data, {labels} labels, test split of "
        f"{rows[0][1].get('n_test', '?')} images, IoU in %)\n\n{table}\n"))
    results_plot(run.path / "results.png", rows, class_names)
    write_json(run.path / "results.json", {key: {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
                                                 "per_class_iou": m["per_class_iou"]}
                                           for (key, _), (_, m) in zip(ROWS, rows)})
    print(f"\ndtlabel demo: test results on the default data ({labels} labels)\n\n{table}\n", flush=True)
    log.info("results: %s, %s", run.path / "results.md", run.path / "results.png")
    return {"labels": labels, "minutes": round((time.time() - t0) / 60, 2),
            **{f"{key}_miou": m["miou"] for (key, _), (_, m) in zip(ROWS, rows)}}
