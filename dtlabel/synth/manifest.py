"""``manifest.json`` of a synthesize run (from the shard sidecars) and its ``preview.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dtlabel.synth.shards import SHARD_DIR, decode_group, iter_groups, key_of, shard_name, sidecar_name

FORMAT = "dtlabel-synth/2"  # 2: 16-bit uncertainty maps (1: 8-bit; both read)
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def build_manifest(path: Path, plan: dict[str, Any], ranges: list[tuple[int, int]], class_names: list[str],
                   labeler: Any, teacher: Any, cfg: DictConfig, source: dict[str, Any] | None, world: int) -> dict[str, Any]:
    """Aggregate every shard's sidecar into the manifest (count, hashes, histogram, scores).

    ``source`` (real images): ``{"folder": DIR}`` for ``--images`` or ``{"data": name, "root": ...,
    "excluded": n}`` for a data set's pool; the plan's files (name + sha256) are added to it."""
    n = int(plan["n"])
    folder = path / SHARD_DIR
    scores: list[float | None] = [None] * n
    hist = np.zeros(len(class_names), dtype=np.int64)
    shards, skipped = [], []
    total_bytes = 0
    for j, (first, last) in enumerate(ranges):
        info = json.loads((folder / sidecar_name(j)).read_text())
        for i, s in zip(info["indices"], info["scores"]):
            scores[i] = s
        hist += np.asarray(info["class_pixels"], dtype=np.int64)
        skipped += info["skipped"]
        total_bytes += int(info["bytes"])
        shards.append({"name": f"{SHARD_DIR}/{shard_name(j)}", "count": info["count"], "first": first, "last": last,
                       "bytes": info["bytes"], "sha256": info["sha256"]})
    present = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    count = int(present.size)
    if plan["mode"] == "image":
        source = {**(source or {}), "files": plan["files"]}
    return {
        "format": FORMAT,
        "mode": plan["mode"],
        "count": count,
        "n": n,
        "num_classes": len(class_names),
        "class_names": class_names,
        "size": plan["size"],
        "logits_size": plan["logits_size"],
        "logits": "float16 log-probabilities (C, h, w), area-averaged probabilities, clamped at ln(1e-6)",
        "image_format": plan["image_format"],
        "uncertainty": {"head": labeler.uncertainty_kind,
                        "encoding": "16-bit PNG = round(65535 * min(1, u / ln(num_classes))); reader: value / 65535"},
        "score": {"definition": f"mean of the top {float(cfg.synth.score_top):g} fraction of the stored "
                                "uncertainty (value / 65535) per image; higher = more uncertain",
                  "quantiles": {f"{q:g}": (round(float(np.quantile(present, q)), 6) if count else None)
                                for q in QUANTILES}},
        "scores": scores,
        "class_pixels": hist.tolist(),
        "class_pixel_share": (hist / max(1, int(hist.sum()))).round(6).tolist(),
        "base_seed": plan["base_seed"],
        "samples_per_shard": plan["samples_per_shard"],
        "shards": shards,
        "bytes": total_bytes,
        "bytes_per_sample": round(total_bytes / max(1, count), 1),
        "skipped": skipped,
        "teacher": ({"hash": plan["teacher_hash"], "path": str(cfg.inputs.teacher), **_teacher_info(teacher)}
                    if teacher is not None else None),
        # the labeler (a head, a student or an ensemble; the key keeps format 2's name): students keep its
        # labeled images (every member's) out of their validation slice
        "head": {"hash": plan["head_hash"], "path": labeler.path,
                 "kind": labeler.head_kind if labeler.kind == "head" else labeler.kind,
                 "trained_on_teacher": labeler.meta.get("teacher_hash"),
                 "label_ids": labeler.meta.get("label_ids")},
        "labeler": labeler.describe(),
        "sampler": plan.get("sampler"),
        "sample_steps": plan.get("sample_steps"),
        "source": source,
        "world_size": world,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _teacher_info(teacher: Any) -> dict[str, Any]:
    d = teacher.describe()
    return {"family": d["family"], "kwargs": d["kwargs"], "image_size": d["image_size"]}


def first_samples(path: Path, manifest: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The ``k`` lowest-index samples, decoded (reads only the first shards)."""
    out: list[dict[str, Any]] = []
    for sh in manifest["shards"]:
        for _, group in iter_groups(path / sh["name"]):
            out.append(decode_group(group))
            if len(out) >= k:
                return out
    return out


def write_preview(path: Path, manifest: dict[str, Any], k: int, class_names: list[str]) -> Path | None:
    """``preview.png``: per sample the image, its coloured pseudo-label over it, and the uncertainty."""
    from dtlabel.report import overlay, save_grid

    samples = first_samples(path, manifest, k)
    if not samples:
        return None
    c = len(class_names)
    cells = []
    for s in samples:
        u = (255 * s["uncertainty"] / max(float(s["uncertainty"].max()), 1e-6)).astype(np.uint8)
        cells += [s["image"], overlay(s["image"], s["label"], c, 0.6), np.stack([u, u, u], -1)]
    per_row = 3 * min(4, len(samples))
    rows = [cells[r:r + per_row] for r in range(0, len(cells), per_row)]
    titles = ["image", "pseudo-label", "uncertainty"] * (per_row // 3)
    mode = "sampled" if manifest["mode"] == "sample" else "real images"
    return save_grid(path / "preview.png", rows, titles=titles, class_names=class_names,
                     suptitle=f"synthesize ({mode}): samples {key_of(samples[0]['index'])}.. of {manifest['count']}, "
                              "uncertainty white = the image's max")
