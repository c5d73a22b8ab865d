"""A self-contained HTML report of finished run folders: what ``dtlabel report`` and the demo write.

One file that opens from the file system with no server: every picture is embedded as a PNG data
URI, tagged ``data-file`` with the path it came from (relative to the run folder), so a test can
check that each promised picture is there. Sections:

1. the results table (mIoU, pixel accuracy, per-class IoU) of every run that scored a model on a
   test split (``eval``, ``train-head``, ``train-student``), and the per-class bars;
2. a prediction grid on the same test images: image | truth | one column per model (models are
   loaded from their runs and scored again on the first ``grid_images`` test images);
3. per run: its command, wall time, exact command line and pictures (teacher samples, loss curves,
   teacher vs regressed features, the pseudo-label preview with uncertainty, overlays, confusion).
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtlabel import __version__
from dtlabel.io import atomic_path, read_json
from dtlabel.runs import DESCRIPTOR

log = logging.getLogger(__name__)

# pictures each command writes, in the order a person reads them: (file, caption)
PICTURES: dict[str, tuple[tuple[str, str], ...]] = {
    "fit-teacher": (("samples.png", "teacher samples"), ("loss.png", "training loss")),
    "teacher model": (("samples.png", "teacher samples"),),
    "pretrain": (("features.png", "teacher vs regressed features (first PCA components)"),
                 ("loss.png", "training loss")),
    "train-head": (("loss.png", "training loss"), ("miou.png", "validation / test mIoU"),
                   ("overlays.png", "test overlays")),
    "synthesize": (("preview.png", "pseudo-labels with uncertainty"),),
    "train-student": (("stage1/loss.png", "stage 1 training loss (pseudo-labels + real labels)"),
                      ("stage1/miou.png", "stage 1 validation / test mIoU"), ("loss.png", "training loss"),
                      ("miou.png", "validation / test mIoU"), ("overlays.png", "test overlays")),
    "eval": (("iou.png", "per-class IoU"), ("confusion.png", "confusion matrix"), ("overlays.png", "overlays")),
    "data preview": (("preview.png", "data preview"),),
    "suggest": (("contact_sheet.png", "suggested images"),),
}
MODEL_COMMANDS = ("eval", "train-head", "train-student")


@dataclass
class RunInfo:
    """A finished run folder (or a shipped teacher folder, command ``teacher model``)."""

    path: Path
    command: str
    desc: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def pictures(self) -> list[tuple[Path, str]]:
        return [(self.path / f, cap) for f, cap in PICTURES.get(self.command, ()) if (self.path / f).is_file()]

    def metrics(self) -> dict[str, Any] | None:
        f = self.path / "metrics.json"
        if self.command not in MODEL_COMMANDS or not f.is_file():
            return None
        from dtlabel.errors import RunError

        return read_json(f, RunError, what=str(f))


def collect_runs(folders: Sequence[str | Path]) -> list[RunInfo]:
    """Finished run folders in the order given; a demo folder stands for its stages (in the order
    they finished) and a teacher model folder (``model_index.json``, no ``run.json``) for itself."""
    from dtlabel.errors import RunError

    out: list[RunInfo] = []
    for folder in folders:
        path = Path(folder)
        desc_file = path / DESCRIPTOR
        if desc_file.is_file():
            desc = read_json(desc_file, RunError, what=f"{path}: {DESCRIPTOR}")
            if desc.get("command") == "demo":
                stages = [p for p in path.iterdir() if (p / DESCRIPTOR).is_file()]
                out += collect_runs(sorted(stages, key=lambda p: (p / DESCRIPTOR).stat().st_mtime_ns))
            else:
                out.append(RunInfo(path, str(desc.get("command")), desc))
        elif (path / "model_index.json").is_file():
            out.append(RunInfo(path, "teacher model", {}))
        elif path.is_dir():
            raise RunError(f"{path}: no {DESCRIPTOR}, the run is unfinished; finish it (--resume) or leave it out")
        else:
            raise RunError(f"{path}: folder not found; pass finished run folders")
    return out


def _img(run: RunInfo, path: Path, alt: str) -> str:
    """An embedded picture of a run folder, tagged ``data-file="<run name>/<file in the run>"``."""
    return _png_img(path.read_bytes(), f"{run.name}/{path.relative_to(run.path).as_posix()}", alt)


def _png_img(png: bytes, name: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" data-file="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>')


def _render(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """Call a picture function of :mod:`dtlabel.report` into a temporary file and return its bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "picture.png"
        fn(path, *args, **kwargs)
        return path.read_bytes()


def model_rows(runs: Sequence[RunInfo], row_labels: dict[str, str] | None = None) -> list[tuple[str, RunInfo, dict]]:
    """``(label, run, metrics)`` of the runs that scored a model; with ``row_labels`` ({folder: label})
    only those, in that order."""
    scored = [(r, m) for r in runs if (m := r.metrics()) is not None]
    if row_labels:
        by_path = {str(r.path): (r, m) for r, m in scored}
        return [(label, *by_path[p]) for p, label in row_labels.items() if p in by_path]
    return [(f"{r.name} ({m.get('model', r.command)})", r, m) for r, m in scored]


def _model_source(run: RunInfo) -> tuple[str, str] | None:
    """``("student" | "head", folder)`` of the model a run scored."""
    if run.command == "train-student":
        return "student", str(run.path)
    if run.command == "train-head":
        return "head", str(run.path)
    if run.command == "eval":
        for key in ("student", "head"):
            if run.desc.get(key):
                return key, str(run.desc[key])
    return None


def prediction_grid(rows: Sequence[tuple[str, RunInfo, dict]], n: int, device: str = "auto",
                    progress: bool = False) -> bytes | None:
    """PNG of ``n`` test images: image | truth | one colourised prediction per model (their data set
    from the first model's ``config.yaml``); None when no model can be loaded again."""
    from omegaconf import OmegaConf

    from dtlabel.data import build_data
    from dtlabel.device import select_device
    from dtlabel.report import colorize, save_grid
    from dtlabel.scoring import open_head, open_student

    models = [(label, src) for label, run, _ in rows if (src := _model_source(run)) is not None]
    if not models or n < 1:
        return None
    dev = select_device(device)
    first = Path(models[0][1][1])
    cfg = OmegaConf.load(first / "config.yaml")
    bundle = build_data(cfg.data)
    ids = list(bundle.splits.get("test") or [])[:n]
    if bundle.labeled is None or not ids:
        return None
    columns, truth = [], None
    for label, (kind, folder) in models:
        mcfg = OmegaConf.load(Path(folder) / "config.yaml")
        model = (open_student(folder, dev) if kind == "student" else open_head(folder, dev, mcfg.teacher))
        size = model.train_size or tuple(int(s) for s in cfg.data.size)
        ev = model.score(bundle.labeled, ids, size, batch_size=len(ids), keep=len(ids), progress=progress)
        columns.append((label, [s[2] for s in ev.samples]))
        truth = truth or [(s[0], s[1]) for s in ev.samples]
    c = bundle.labeled.num_classes
    grid = [[img, colorize(t, c)] + [colorize(col[i], c) for _, col in columns] for i, (img, t) in enumerate(truth)]
    titles = ["image", "truth", *[label.split(" (")[0] for label, _ in columns]]
    return _render(save_grid, grid, titles=titles, class_names=list(bundle.labeled.class_names),
                   suptitle=f"{bundle.name} test images: truth and predictions")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}tr.best td{font-weight:bold;background:#eef7ee}
figure{display:inline-block;margin:0.5em;vertical-align:top}figure img{max-width:560px;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}code{background:#f4f4f4;padding:2px 4px;font-size:12px;word-break:break-all}
section{border-top:1px solid #ddd;margin-top:1.5em}"""


def _table(rows: Sequence[tuple[str, RunInfo, dict]]) -> str:
    names = list(rows[0][2].get("per_class_iou") or {})
    best = max(range(len(rows)), key=lambda i: rows[i][2].get("miou") or -1)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["model", "mIoU", "pixel acc", *names])
    lines = [f"<table><tr>{head}</tr>"]
    for i, (label, _, m) in enumerate(rows):
        per = m.get("per_class_iou") or {}
        cells = [m.get("miou"), m.get("pixel_accuracy"), *[per.get(n) for n in names]]
        tds = "".join(f"<td>{v:.1f}</td>" if isinstance(v, (int, float)) else "<td>-</td>" for v in cells)
        lines.append(f'<tr{" class=best" if i == best else ""}><td>{html.escape(label)}</td>{tds}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def clock(seconds: Any) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on) of a wall time in seconds; ``-`` when unknown."""
    if not isinstance(seconds, (int, float)):
        return "-"
    m, s = divmod(round(max(0.0, float(seconds))), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def write_report(out: str | Path, runs: Sequence[RunInfo], title: str, row_labels: dict[str, str] | None = None,
                 grid_images: int = 6, device: str = "auto", progress: bool = False) -> Path:
    """Write the report of ``runs`` to ``out`` (atomically) and return its path."""
    from dtlabel.report import results_plot

    out = Path(out)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>dtlabel {__version__}, written {time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    rows = model_rows(runs, row_labels)
    if rows:
        names = list(rows[0][2].get("per_class_iou") or {})
        split = rows[0][2].get("split", "test")
        parts.append(f"<section><h2>Results ({html.escape(str(split))} split, "
                     f"{rows[0][2].get('n_images', '?')} images, IoU in %)</h2>{_table(rows)}")
        parts.append(_png_img(_render(results_plot, [(lab, m) for lab, _, m in rows], names,
                                      title="per-class IoU"), "results-bars.png", "per-class IoU of each model"))
        grid = prediction_grid(rows, grid_images, device, progress)
        if grid is not None:
            parts.append(_png_img(grid, "prediction-grid.png", "test images: truth and each model's prediction"))
        parts.append("</section>")
    total = sum(float(r.desc.get("seconds") or 0) for r in runs)
    trs = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.command)}</td>"
                  f"<td>{clock(r.desc.get('seconds'))}</td></tr>" for r in runs)
    parts.append(f"<section><h2>Stages</h2><table><tr><th>run</th><th>command</th><th>wall time</th></tr>{trs}"
                 f"<tr><td>total</td><td></td><td>{clock(total)}</td></tr></table></section>")
    for r in runs:
        cmd = r.desc.get("command_line") or ("(shipped teacher, see its README.md)" if r.command == "teacher model"
                                             else "(not recorded)")
        parts.append(f"<section><h2>{html.escape(r.name)}: {html.escape(r.command)}</h2>"
                     f"<p>wall time {clock(r.desc.get('seconds'))}; <code>{html.escape(str(cmd))}</code></p>")
        parts += [_img(r, p, f"{r.name}: {cap}") for p, cap in r.pictures()]
        parts.append("</section>")
    parts.append("</body></html>\n")
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    log.info("report: %s (%d runs, %d models)", out, len(runs), len(rows))
    return out


def picture_files(runs: Sequence[RunInfo]) -> list[Path]:
    """Every picture the report of ``runs`` embeds from the run folders (for checks)."""
    return [p for r in runs for p, _ in r.pictures()]


__all__ = ["PICTURES", "RunInfo", "clock", "collect_runs", "model_rows", "picture_files", "prediction_grid", "write_report"]
