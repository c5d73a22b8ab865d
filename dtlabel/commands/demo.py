"""``dtlabel demo``: the whole method on the embedded default data, then a results table and a report.

Stages, each an ordinary dtlabel command (run in this process) with its own run folder inside the
demo's folder (so each has its config, log and ``run.json``, and can be inspected or reused):

1. ``teacher``: the shipped default-data teacher (``models/default``, see its model card), or with
   ``--fit-teacher`` a ``fit-teacher`` run on the default data's label-free pool;
2. ``pretrain/`` (``demo.with_pretrain``): ``pretrain``: the student's backbone regresses the teacher's
   features (no labels);
3. ``head/``: ``train-head --labels N`` on the teacher's features;
4. ``synth/``: ``synthesize data=default``: the head's pseudo-labels of the label-free pool (never
   the labeled, validation or test images);
5. ``student/``: ``train-student --synth synth/ --labels N`` (with ``demo.with_pretrain``: ``--backbone
   pretrain/``);
6. ``finetune/`` (``demo.with_pretrain``): ``train-student --labels N --backbone pretrain/`` (pretrained,
   then fine-tuned);
7. ``scratch/``: ``train-student --labels N``: the baseline, the same student, labels and steps;
8. ``eval-*/``: ``dtlabel eval`` of each model on the test split (metrics, overlays, confusion);
9. ``results.md`` / ``results.png`` / ``report.html``: the table, per-class bars, the prediction
   grid and every stage's pictures, wall time and exact command.

The three students share ``demo.students`` (recipe, steps, batch); each adds only its inputs. A stage
whose folder already holds ``run.json`` is skipped, so ``--resume`` continues an interrupted demo
where it stopped; an unfinished stage continues with its own ``--resume``. Settings live in
``configs/demo/<preset>.yaml``; ``demo.minutes`` holds the measured time of each stage for the ETA.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dtlabel.errors import ConfigError, RunError
from dtlabel.html_report import clock, collect_runs, write_report
from dtlabel.io import read_json, write_json, write_text
from dtlabel.report import results_plot, results_table
from dtlabel.runs import DESCRIPTOR, Run
from dtlabel.teachers import resolve_model_root
from dtlabel.teachers.loading import shipped_model

log = logging.getLogger(__name__)

# (key, row label, eval folder); the order of the results table
ROWS = (("head", "head (teacher features)", "eval-head"),
        ("student", "student (pseudo-labels + real labels)", "eval-student"),
        ("finetune", "fine-tuned (pretrained backbone, real labels only)", "eval-finetune"),
        ("scratch", "scratch student (real labels only)", "eval-scratch"))


def rows(pretrain: bool) -> list[tuple[str, str, str]]:
    """The results table's rows: with ``demo.with_pretrain`` the student starts from the pretrained
    backbone and the fine-tuned row is there too."""
    if not pretrain:
        return [r for r in ROWS if r[0] != "finetune"]
    return [(k, "student (pretrained backbone, pseudo-labels + real labels)" if k == "student" else label, f)
            for k, label, f in ROWS]


@dataclass
class Stage:
    """One dtlabel command of the chain: ``folder`` under the demo's run folder, ``argv`` after
    ``dtlabel``; for the shipped teacher ``folder`` is None (nothing to run) and ``shipped`` its path."""

    name: str
    folder: str | None
    argv: list[str]
    shipped: Path | None = None


def _list(cfg: DictConfig, key: str) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if not OmegaConf.is_list(value):
        raise ConfigError(f"demo.{key} must be a list of key=value overrides, got {value!r}")
    return [str(v) for v in value]


def shipped_teacher(path: str) -> Path:
    """The shipped teacher folder: ``path`` as given when it exists, else the package's shipped model
    (``models/default`` is package data)."""
    p = Path(path)
    if not p.exists():
        p = shipped_model(p) or p
    if not p.is_dir():
        raise ConfigError(f"demo.teacher_model {path}: no teacher folder there (a relative path is taken from the "
                          "working directory); run dtlabel demo --fit-teacher to train one (see configs/demo/), or "
                          "point demo.teacher_model at a teacher folder")
    resolve_model_root(str(p))
    return p


def plan(run: Run, cfg: DictConfig, labels: int) -> list[Stage]:
    """The chain's stages in order (the teacher first: shipped, or fitted with ``demo.fit_teacher``)."""
    dc = cfg.demo
    data = ["data=default", f"data.size=[{int(cfg.data.size[0])},{int(cfg.data.size[1])}]", *_list(dc, "data")]
    if bool(dc.fit_teacher):
        teacher = str(run.path / "teacher")
        stages = [Stage("fit-teacher", "teacher", ["fit-teacher", *data, *_list(dc, "teacher")])]
    else:
        shipped = shipped_teacher(str(dc.teacher_model))
        teacher = str(shipped)
        stages = [Stage("teacher", None, [], shipped)]
    pre, head, synth = (str(run.path / f) for f in ("pretrain", "head", "synth"))
    students = ["train-student", "--labels", str(labels), *data, *_list(dc, "students")]
    pretrain = bool(dc.get("with_pretrain", True))
    if pretrain:
        stages.append(Stage("pretrain", "pretrain", ["pretrain", "--teacher", teacher, *data, *_list(dc, "pretrain")]))
    stages += [
        Stage("train-head", "head", ["train-head", "--labels", str(labels), "--teacher", teacher, *data,
                                     *_list(dc, "head")]),
        Stage("synthesize", "synth", ["synthesize", "--teacher", teacher, "--head", head, *data, *_list(dc, "synth")]),
        Stage("student", "student", [*students, "--synth", synth, *(["--backbone", pre] if pretrain else []),
                                     *_list(dc, "student")]),
        *([Stage("finetune", "finetune", [*students, "--backbone", pre])] if pretrain else []),
        Stage("scratch", "scratch", students),
    ]
    for key, _, folder in rows(pretrain):
        model = ["--head", head] if key == "head" else ["--student", str(run.path / key)]
        stages.append(Stage(folder, folder, ["eval", *model, *data]))
    return stages


class Progress:
    """One line per stage: ``[3/11] train-head: about 2:10, demo 8:40 left``, from the measured
    minutes of ``demo.minutes`` scaled by how fast this machine ran the stages so far."""

    def __init__(self, stages: list[Stage], minutes: dict[str, float]) -> None:
        self.stages = stages
        self.expect = [60.0 * float(minutes.get(s.folder or s.name, 0.0)) for s in stages]
        self.spent = 0.0
        self.planned_done = 0.0

    def _speed(self) -> float:
        return self.spent / self.planned_done if self.planned_done > 0 else 1.0

    def start(self, k: int, shown: str) -> None:
        speed = self._speed()
        this, left = self.expect[k] * speed, sum(self.expect[k:]) * speed
        eta = f": about {clock(this)}, demo {clock(left)} left" if left > 0 else ""
        print(f"[{k + 1}/{len(self.stages)}] {self.stages[k].name}{eta}\n    {shown}", file=sys.stderr, flush=True)

    def done(self, k: int, seconds: float) -> None:
        self.spent += seconds
        self.planned_done += self.expect[k]
        print(f"[{k + 1}/{len(self.stages)}] {self.stages[k].name} done in {clock(seconds)}", file=sys.stderr,
              flush=True)

    def skip(self, k: int, where: str) -> None:
        print(f"[{k + 1}/{len(self.stages)}] skipping finished stage {self.stages[k].name} ({where})",
              file=sys.stderr, flush=True)


def _run_stage(run: Run, stage: Stage, common: list[str], quiet: bool) -> float:
    """Run ``dtlabel <argv> --out RUN/folder`` (in this process: a stage pays no interpreter start and
    no imports; it writes its own run folder and log exactly as from the shell); returns its wall time."""
    from dtlabel.cli import main as dtlabel_main

    out = run.path / str(stage.folder)
    argv = [*stage.argv, *common, "--out", str(out)]
    if out.is_dir() and any(out.iterdir()):
        argv.append("--resume")
    if quiet:
        argv.append("-q")
    root = logging.getLogger()
    mine = root.handlers[:]  # the demo's log handlers step aside: the stage logs to its own run folder
    for h in mine:
        root.removeHandler(h)
    t0 = time.time()
    try:
        code = dtlabel_main(argv)
    finally:
        for h in mine:
            root.addHandler(h)
    if code != 0:
        raise RunError(f"demo stage '{stage.folder}' failed (exit {code}); see {out}; fix it and rerun with "
                       f"--resume --out {run.path}")
    return time.time() - t0


def _metrics(folder: Path) -> dict[str, Any]:
    return read_json(folder / "metrics.json", RunError, fix="rerun dtlabel demo with --resume")


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    dc = cfg.demo
    labels = int(cfg.labels if cfg.get("labels") is not None else dc.labels)
    quiet = bool(getattr(args, "quiet", False))
    common = [f"--seed={int(cfg.seed)}", f"--device={cfg.device}"]
    t0 = time.time()
    stages = plan(run, cfg, labels)
    minutes = OmegaConf.to_container(dc.minutes, resolve=True) if dc.get("minutes") else {}
    progress = Progress(stages, minutes)
    for k, stage in enumerate(stages):
        if stage.folder is None:
            progress.skip(k, f"shipped: {stage.shipped}")
            continue
        out = run.path / stage.folder
        if (out / DESCRIPTOR).is_file():
            progress.skip(k, str(out))
            continue
        progress.start(k, shlex.join(["dtlabel", *stage.argv]))
        progress.done(k, _run_stage(run, stage, common, quiet))

    shown = rows(bool(dc.get("with_pretrain", True)))
    scored = [(label, _metrics(run.path / folder)) for _, label, folder in shown]
    class_names = list(scored[0][1]["per_class_iou"].keys())
    table = results_table(scored, class_names)
    write_text(run.path / "results.md", (
        f"# dtlabel demo results (default data, {labels} labels, test split of "
        f"{scored[0][1].get('n_images', '?')} images, IoU in %)\n\n{table}\n"))
    results_plot(run.path / "results.png", scored, class_names)
    results = {key: {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"], "per_class_iou": m["per_class_iou"]}
               for (key, _, _), (_, m) in zip(shown, scored)}
    write_json(run.path / "results.json", results)
    runs = collect_runs([s.shipped if s.folder is None else run.path / s.folder for s in stages])
    labels_of = {str(run.path / folder): label for _, label, folder in shown}
    report = write_report(run.path / "report.html", runs, title=f"dtlabel demo: default data, {labels} labels",
                          row_labels=labels_of, grid_images=int(dc.get("grid_images", 6)), device=str(cfg.device),
                          progress=not quiet)
    print(f"\ndtlabel demo: test results on the default data ({labels} labels)\n\n{table}\n\n"
          f"report: {report}", flush=True)
    log.info("results: %s, %s, %s", run.path / "results.md", run.path / "results.png", report)
    return {"labels": labels, "minutes": round((time.time() - t0) / 60, 2),
            **{f"{key}_miou": results[key]["miou"] for key, _, _ in shown}}

