"""Pictures a person would rather look at than read: overlays, grids, per-class bars, curves.

Figures are matplotlib ``Figure`` objects drawn straight to PNG (no pyplot), so importing dtlabel
neither picks a GUI backend nor keeps figures alive in a global registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dtlabel.io import atomic_path


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3) uint8`` colours; class 0 (background) is black, the rest distinct."""
    base = np.array([
        [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
        [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
        [255, 215, 180], [0, 0, 128], [128, 128, 128]], dtype=np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 256, size=(num_classes - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3) uint8``; ignored pixels are white."""
    pal = palette(num_classes)
    out = np.full(mask.shape + (3,), 255, dtype=np.uint8)
    valid = (mask >= 0) & (mask < num_classes) & (mask != ignore_index)
    out[valid] = pal[mask[valid].astype(np.int64)]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the coloured mask over ``image (H, W, 3) uint8``; background (class 0) stays clear."""
    col = colorize(mask, num_classes, ignore_index).astype(np.float32)
    img = image.astype(np.float32)
    a = np.where((mask > 0)[..., None], alpha, 0.0)
    return (img * (1 - a) + col * a).clip(0, 255).astype(np.uint8)


def _subplots(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A ``(Figure, axes)`` pair at 110 dpi, outside pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save_fig(fig, path: Path) -> Path:  # noqa: ANN001
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    return Path(path)


def save_grid(path: str | Path, rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None,
              class_names: Sequence[str] | None = None, suptitle: str | None = None, cell: float = 1.6) -> Path:
    """Save a grid of images (each row a list of ``(H, W, 3) uint8``) with an optional class legend."""
    from matplotlib.patches import Patch

    nr, nc = len(rows), max(len(r) for r in rows)
    h, w = rows[0][0].shape[:2]
    fig, axes = _subplots((nc * cell * w / max(h, w) + 0.2, nr * cell * h / max(h, w) + 0.6), nr, nc,
                          squeeze=False)
    for r, row in enumerate(rows):
        for c in range(nc):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
                if titles and r == 0 and c < len(titles):
                    ax.set_title(titles[c], fontsize=7)
    if class_names:
        pal = palette(len(class_names)) / 255.0
        fig.legend(handles=[Patch(color=pal[i], label=n) for i, n in enumerate(class_names)],
                   loc="lower center", ncol=min(len(class_names), 6), fontsize=7, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if class_names else 0, 1, 1))
    return _save_fig(fig, Path(path))


def save_curve(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
               ylabel: str, title: str = "", logy: bool = False) -> Path:
    """Line plot of named ``(x, y)`` series."""
    fig, ax = _subplots((6, 3.6))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, Path(path))


def save_bars(path: str | Path, names: Sequence[str], values: Sequence[float], title: str = "",
              ylabel: str = "IoU (%)") -> Path:
    """Per-class bar chart (e.g. IoU), values in the unit of ``ylabel``."""
    fig, ax = _subplots((max(4, 0.45 * len(names) + 1.5), 3.4))
    pal = palette(len(names)) / 255.0
    colors = [pal[i] if pal[i].sum() > 0 else (0.4, 0.4, 0.4) for i in range(len(names))]
    bars = ax.bar(range(len(names)), values, color=colors, edgecolor="black", lw=0.5)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_fig(fig, Path(path))


def save_confusion(path: str | Path, matrix: np.ndarray, names: Sequence[str], title: str = "") -> Path:
    """Row-normalised confusion matrix (rows ground truth, columns prediction) as a heat map, in %."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    pct = np.where(rows > 0, 100.0 * m / np.maximum(rows, 1), 0.0)
    n = len(names)
    fig, ax = _subplots((max(3.5, 0.5 * n + 2), max(3, 0.45 * n + 1.5)))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            if pct[i, j] >= 0.5:
                ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of ground-truth pixels")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_fig(fig, Path(path))


def save_eval_pictures(out: str | Path, samples: Sequence[tuple], names: Sequence[str], ignore_index: int,
                       summary: dict, title: str, confusion: np.ndarray | None = None) -> None:
    """The pictures of a scored model: ``overlays.png`` (image / ground truth / prediction, and the
    uncertainty on one colour scale when the samples carry one), ``iou.png`` (per-class bars) and,
    given a confusion matrix, ``confusion.png`` (row-normalised)."""
    import matplotlib

    out, c = Path(out), len(names)
    if samples:
        with_unc = all(len(s) > 3 and s[3] is not None for s in samples)
        top = max(max(float(s[3].max()) for s in samples), 1e-6) if with_unc else 1.0
        cmap = matplotlib.colormaps["magma"]
        rows = []
        for s in samples:
            row = [s[0], overlay(s[0], s[1], c, ignore_index=ignore_index), overlay(s[0], s[2], c, ignore_index=ignore_index)]
            if with_unc:
                row.append((cmap(np.clip(s[3] / top, 0, 1))[..., :3] * 255).astype(np.uint8))
            rows.append(row)
        titles = ["image", "ground truth", "prediction"] + ([f"uncertainty (0-{top:.2g} nats)"] if with_unc else [])
        save_grid(out / "overlays.png", rows, titles=titles, class_names=list(names), suptitle=title)
    values = [v if v is not None else 0.0 for v in summary["per_class_iou"].values()]
    miou = summary["miou"] if summary["miou"] is not None else float("nan")
    save_bars(out / "iou.png", list(names), values, title=f"{title}: mIoU {miou:.1f}")
    if confusion is not None:
        save_confusion(out / "confusion.png", confusion, list(names), title=title)


def save_training_curves(run_dir: str | Path, title: str, loss_label: str = "training loss", logy: bool = False) -> None:
    """``loss.png`` from the training lines of ``metrics.jsonl`` (with a running mean) and, when the
    run evaluated, ``miou.png`` (validation and test mIoU against the step)."""
    import json

    run_dir = Path(run_dir)
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return
    recs = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "loss" in r]
    if train:
        xs, ys = [r["step"] for r in train], [r["loss"] for r in train]
        series = {"loss": (xs, ys)}
        if all("loss_ema" in r for r in train):
            series["running mean"] = (xs, [r["loss_ema"] for r in train])
        save_curve(run_dir / "loss.png", series, "step", loss_label, title=title, logy=logy)
    evals: dict[str, tuple[list, list]] = {}
    for r in recs:
        for key, label in (("val_miou", "validation"), ("test_miou", "test")):
            if r.get(key) is not None:
                evals.setdefault(label, ([], []))
                evals[label][0].append(r["step"])
                evals[label][1].append(r[key])
    if evals:
        save_curve(run_dir / "miou.png", evals, "step", "mIoU (%)", title=title)


def results_table(rows: list[tuple[str, dict]], class_names: list[str]) -> str:
    """Markdown table: mIoU, pixel accuracy and per-class IoU per model."""
    head = "| model | mIoU | pixel acc | " + " | ".join(class_names) + " |"
    sep = "|---" * (3 + len(class_names)) + "|"
    lines = [head, sep]
    for label, m in rows:
        per = m.get("per_class_iou") or {}
        cells = [f"{per[c]:.1f}" if per.get(c) is not None else "-" for c in class_names]
        lines.append(f"| {label} | {m['miou']:.1f} | {m['pixel_accuracy']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_plot(path: str | Path, rows: list[tuple[str, dict]], class_names: list[str],
                 title: str = "dtlabel demo: head vs students") -> None:
    """Grouped bar chart of per-class test IoU and mIoU, one bar per model (written atomically)."""
    x = np.arange(len(class_names) + 1)
    width = 0.8 / max(1, len(rows))
    fig, ax = _subplots((max(6, 0.7 * len(x) + 2), 3.6))
    for k, (label, m) in enumerate(rows):
        per = m.get("per_class_iou") or {}
        vals = [per.get(c) or 0.0 for c in class_names] + [m["miou"]]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, vals, width, label=label, edgecolor="black", lw=0.4)
    ax.set_xticks(x)
    ax.set_xticklabels([*class_names, "mIoU"], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("test IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save_fig(fig, Path(path))
