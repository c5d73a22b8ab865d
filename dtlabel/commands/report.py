"""``dtlabel report RUN [RUN ...] --out DIR``: a self-contained HTML report of finished run folders.

The page (``DIR/report.html``) is built by :mod:`dtlabel.html_report`: the results table of every run
that scored a model, per-class bars, a prediction grid on the same test images, and each run's
pictures, wall time and exact command. A demo folder stands for all of its stages; a teacher model
folder (``models/default``) for its samples. Compare runs by passing several.
"""

from __future__ import annotations

import argparse
from typing import Any

from omegaconf import DictConfig

from dtlabel.errors import ConfigError
from dtlabel.html_report import collect_runs, model_rows, picture_files, write_report
from dtlabel.runs import Run


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    folders = list(getattr(args, "runs", None) or [])
    if not folders:
        raise ConfigError("report needs at least one finished run folder: dtlabel report RUN [RUN ...]")
    runs = collect_runs(folders)
    title = str(cfg.title) if cfg.get("title") else "dtlabel report: " + ", ".join(r.name for r in runs[:6])
    path = write_report(run.path / "report.html", runs, title, grid_images=int(cfg.grid_images),
                        device=str(cfg.device), progress=not args.quiet)
    print(f"report: {path}", flush=True)
    return {"report": path.name, "runs": [str(r.path) for r in runs], "models": len(model_rows(runs)),
            "pictures": len(picture_files(runs))}
