"""``dtlabel synthesize``: a pseudo-labeled data set from a teacher and a head, in tar shards.

Two sources of images:

- sampled (``--n N``): the teacher samples image ``i`` from seed ``base_seed + i`` (its configured
  sampler, DDIM by default, ``synth.sample_steps`` steps) and reads its features with the same seed;
- real (``--images DIR``): image ``i`` is the ``i``-th file of the sorted recursive listing of DIR,
  resized to ``synth.size`` (default ``data.size``, what students train at) and encoded with the
  noise seed ``base_seed + i``;
- a data set's pool (neither option, ``data=...``): its label-free pool without the head's labeled
  and validation images (``data.pseudo_label_pool``), read like ``--images``.

The head turns the features into probabilities, a hard label, an uncertainty map and a per-image
score (format: :mod:`dtlabel.synth.shards`). Shard ``j`` holds indices ``[j*S, (j+1)*S)`` and rank
``r`` of ``K`` (torchrun) writes the shards with ``j % K == r``, so every sample is the same whatever
the shard size, batch size, number of ranks or restarts. Shards are committed by a rename; ``--resume``
skips committed shards (their sha256 checked against the sidecar) and redoes the rest. Rank 0 writes
``preview.png`` and, last, ``manifest.json`` once every rank is done. Labeling and writing run in a
background thread while the teacher samples the next batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from dtlabel import dist
from dtlabel.data import data_size
from dtlabel.data.folder import list_images
from dtlabel.device import select_device
from dtlabel.errors import ConfigError, DataError, ModelError, RunError
from dtlabel.heads import load_head
from dtlabel.heads.base import DESCRIPTOR as HEAD_DESCRIPTOR
from dtlabel.heads.base import WEIGHTS as HEAD_WEIGHTS
from dtlabel.io import read_json, sha256_bytes, sha256_file, write_json
from dtlabel.heads.reading import teacher_for_head
from dtlabel.labeling import ImageList, image_batch, sampled_batch
from dtlabel.runs import DESCRIPTOR, Run, read_run
from dtlabel.synth.shards import (
    MANIFEST,
    PLAN,
    SHARD_DIR,
    shard_complete,
    shard_ranges,
)
from dtlabel.synth.writer import ShardWriter
from dtlabel.teachers import resolve_model_root

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- inputs
def _check_options(sc: DictConfig) -> None:
    for key in ("samples_per_shard", "batch_size", "queue_size"):
        if int(sc[key]) < 1:
            raise ConfigError(f"synth.{key}={sc[key]} must be >= 1")
    if str(sc.image_format) not in ("png", "jpg"):
        raise ConfigError(f"synth.image_format={sc.image_format}: expected png or jpg")
    if int(sc.logits_downsample) < 0:
        raise ConfigError(f"synth.logits_downsample={sc.logits_downsample} must be >= 0 (0 = no logits)")
    if not 0 < float(sc.score_top) <= 1:
        raise ConfigError(f"synth.score_top={sc.score_top} must be in (0, 1]")
    if sc.get("sample_steps") is not None and int(sc.sample_steps) < 1:
        raise ConfigError(f"synth.sample_steps={sc.sample_steps} must be >= 1 or null")
    if sc.get("size") is not None and (len(sc.size) != 2 or any(int(s) < 8 for s in sc.size)):
        raise ConfigError(f"synth.size={list(sc.size)}: expected [H, W] with both >= 8, or null")


def head_folder(path: str | Path) -> Path:
    p = Path(path)
    return p / "head" if not (p / HEAD_DESCRIPTOR).is_file() and (p / "head" / HEAD_DESCRIPTOR).is_file() else p


def head_hash(path: str | Path) -> str:
    """Short hash of a head folder's descriptor and weights."""
    folder = head_folder(path)
    return sha256_bytes((sha256_file(folder / HEAD_DESCRIPTOR) + sha256_file(folder / HEAD_WEIGHTS)).encode())[:16]


def _image_list(root: str) -> tuple[Path, list[Path]]:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"--images {folder}: folder not found")
    files = list_images(folder)
    if not files:
        raise DataError(f"--images {folder}: no images (jpg, jpeg, png, webp, bmp, tif) found, recursively")
    return folder, files


def _count(cfg: DictConfig, files: list[Path] | None) -> int:
    raw = cfg.get("n")
    if raw is None:
        if files is None:
            raise ConfigError("synthesize needs --n N (how many samples) or --images DIR (label a folder)")
        return len(files)
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"--n {raw!r}: expected an integer number of samples") from None
    if n < 1:
        raise ConfigError(f"--n {n}: must be >= 1")
    if files is not None and n > len(files):
        raise ConfigError(f"--n {n}: the --images folder holds only {len(files)} images")
    return n


def _pool_images(cfg: DictConfig, head: Any) -> tuple[ImageList, dict[str, Any]]:
    """The data set's label-free pool (never validation or test images) without the head's labeled and
    validation images: what ``synthesize data=...`` labels when given neither --n nor --images."""
    from dtlabel.data import build_data, pseudo_label_pool

    bundle = build_data(cfg.data)
    trained_on = head.meta.get("data")
    if trained_on and trained_on != bundle.name:
        raise ConfigError(f"--head was trained on data set '{trained_on}' but the configured data set is "
                          f"'{bundle.name}': pass data={trained_on} data.root=... to label its pool, --images DIR "
                          "to label a folder, or --n N to sample")
    held = [*(head.meta.get("label_ids") or []), *(head.meta.get("val_ids") or [])]
    pool, ids, excluded = pseudo_label_pool(bundle, held)
    log.info("synthesize: the label-free pool of %s, %d images (%d of the head's labeled / validation images left "
             "out; validation and test splits are never in it)", bundle.name, len(ids), excluded)
    return ImageList.of_source(pool, ids), {"data": bundle.name, "root": str(cfg.data.get("root")),
                                            "excluded": excluded}


# ---------------------------------------------------------------------------------------------- shards
def _prepare_folder(run: Run, plan: dict[str, Any]) -> None:
    """Rank 0: the plan every restart must match (checked before anything is removed, so a refused
    --resume leaves a finished run as it was), the shard folder, no temporary leftovers."""
    if (run.path / PLAN).is_file():
        _check_plan(run, plan)
    folder = run.path / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in list(folder.glob(".*.tmp")) + list(run.path.glob(".*.tmp")):
        tmp.unlink()
    for stale in (run.path / DESCRIPTOR, run.path / MANIFEST):
        if stale.exists():  # a resumed run is unfinished until it writes them again, manifest then run.json
            stale.unlink()
    if not (run.path / PLAN).is_file():
        write_json(run.path / PLAN, plan)


def _check_plan(run: Run, plan: dict[str, Any]) -> None:
    prev = read_json(run.path / PLAN, RunError, fix="delete the run folder or use another --out")
    for key in plan:
        if prev.get(key) != plan[key]:
            what = "the image folder's files" if key == "files" else key
            raise RunError(f"--resume: {run.path} was started with another {what} "
                           f"({_short(prev.get(key))} != {_short(plan[key])}); use the same command or another --out")


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ---------------------------------------------------------------------------------------------- command
def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    sc = cfg.synth
    _check_options(sc)
    if not cfg.inputs.get("teacher"):
        raise ConfigError("synthesize needs --teacher DIR (a fit-teacher run folder or a local diffusers model folder)")
    if not cfg.inputs.get("head"):
        raise ConfigError("synthesize needs --head DIR (a train-head run folder)")
    images_root, files = (None, None)
    if cfg.inputs.get("images"):
        images_root, files = _image_list(str(cfg.inputs.images))
    # neither --n nor --images: the configured data set's label-free pool (read once the head is known)
    from_pool = files is None and cfg.get("n") is None
    n = _count(cfg, files) if not from_pool else 0
    files = files[:n] if files is not None else None
    mode = "image" if files is not None or from_pool else "sample"
    resolve_model_root(str(cfg.inputs.teacher))  # "not found" before loading anything

    device = dist.init_from_env(select_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    head_path = Path(str(cfg.inputs.head))
    if (head_path / "head" / HEAD_DESCRIPTOR).is_file():  # a run folder, not a bare head/ folder: finished?
        read_run(head_path, "train-head", "--head")
    head = load_head(str(head_path), device)
    teacher = teacher_for_head(str(cfg.inputs.teacher), cfg.teacher, head, str(cfg.amp)).to(device)
    t_hash, h_hash = teacher.teacher_hash(), head_hash(str(cfg.inputs.head))
    trained_on = head.meta.get("teacher_hash")
    if trained_on and trained_on != t_hash:
        raise ModelError(f"--head {cfg.inputs.head} was trained on teacher {trained_on}, but --teacher "
                         f"{cfg.inputs.teacher} is {t_hash}; pass the teacher the head was trained with")
    if head.num_classes > 256:
        raise ModelError(f"--head has {head.num_classes} classes; shards store labels as uint8 (at most 256)")
    images: ImageList | None = None
    source: dict[str, Any] | None = None
    if files is not None and images_root is not None:
        images = ImageList.of_files(files, images_root)
        source = {"folder": str(images_root)}
    elif from_pool:
        images, source = _pool_images(cfg, head)
        n = len(images.names)
    # real images default to the size the students train at (the head's data size, else data.size),
    # samples to the teacher's
    if mode == "image":
        size = tuple(int(s) for s in (sc.size if sc.get("size") is not None else
                                      head.meta.get("data_size") or data_size(cfg.data)))
    else:
        size = tuple(teacher.image_size)
    ds = int(sc.logits_downsample)
    logits_size = (max(1, size[0] // ds), max(1, size[1] // ds)) if ds > 0 else None
    base_seed = int(sc.base_seed) if sc.get("base_seed") is not None else int(cfg.seed)
    per_shard, bs = int(sc.samples_per_shard), int(sc.batch_size)
    steps = int(sc.sample_steps) if sc.get("sample_steps") is not None else teacher.sample_steps
    ranges = shard_ranges(n, per_shard)
    class_names = list(head.meta.get("class_names") or [f"class_{k}" for k in range(head.num_classes)])

    plan: dict[str, Any] = {
        "mode": mode, "n": n, "samples_per_shard": per_shard, "base_seed": base_seed, "size": list(size),
        "logits_size": list(logits_size) if logits_size else None, "image_format": str(sc.image_format),
        "teacher_hash": t_hash, "head_hash": h_hash, "sample_steps": steps if mode == "sample" else None,
        "sampler": teacher.sampler if mode == "sample" else None,
    }
    if images is not None:
        plan["files"] = [{"file": name, "sha256": images.sha256(i)} if rank == 0 else {"file": name}
                         for i, name in enumerate(images.names)]
    if rank == 0:
        _prepare_folder(run, plan)
    dist.barrier()  # the run folder, the shard folder and plan.json exist from here on
    if rank > 0:
        _check_plan(run, {k: v for k, v in plan.items() if k != "files"})
    shard_dir = run.path / SHARD_DIR
    mine = [j for j in range(len(ranges)) if j % world == rank]
    todo = [j for j in mine if not shard_complete(shard_dir, j, bool(sc.verify_resume))]
    n_todo = sum(ranges[j][1] - ranges[j][0] + 1 for j in todo)
    log.info("synthesize (%s): %d samples in %d shards of %d, %d rank(s); this rank: %d shards to write "
             "(%d already done), %d samples; image %dx%d, %s, batch %d%s", mode, n, len(ranges), per_shard, world,
             len(todo), len(mine) - len(todo), n_todo, size[0], size[1], sc.image_format, bs,
             f", {teacher.sampler} {steps} steps" if mode == "sample" else
             f", from {source.get('folder') or 'the label-free pool of data set ' + str(source.get('data'))}")

    bar = tqdm(total=n_todo, unit="sample", desc=f"synthesize r{rank}" if world > 1 else "synthesize",
               disable=bool(getattr(args, "quiet", False)) or rank > 0, smoothing=0.1)
    writer = ShardWriter(shard_dir, head.num_classes, str(sc.image_format), int(sc.jpg_quality), int(sc.queue_size),
                         on_written=bar.update)
    t0 = time.time()
    try:
        for j in todo:
            first, last = ranges[j]
            writer.open(j, first, last)
            for start in range(first, last + 1, bs):
                idx = list(range(start, min(last + 1, start + bs)))
                if mode == "sample":
                    samples = sampled_batch(teacher, head, idx, base_seed, steps, size, logits_size, float(sc.score_top))
                    writer.add(samples)
                else:
                    samples, skipped = image_batch(teacher, head, images, idx, base_seed, size,  # type: ignore[arg-type]
                                                    logits_size, float(sc.score_top), bool(sc.skip_corrupt))
                    writer.add(samples, skipped)
            writer.close(j)
        writer.finish()
    finally:
        bar.close()
    seconds = time.time() - t0
    rate = n_todo / seconds if seconds > 0 and n_todo else 0.0
    log.info("rank %d: %d samples in %.1fs (%.2f samples/s)", rank, n_todo, seconds, rate)

    dist.barrier()  # every rank's shards are committed
    if rank > 0:
        dist.cleanup()
        return {}
    missing = [j for j in range(len(ranges)) if not shard_complete(shard_dir, j, verify=False)]
    if missing:
        raise RunError(f"shards {missing[:5]} are missing after all ranks finished; rerun with --resume")
    from dtlabel.synth.manifest import build_manifest, write_preview

    manifest = build_manifest(run.path, plan, ranges, class_names, head, teacher, cfg, source, world)
    preview = write_preview(run.path, manifest, int(sc.preview), class_names) if int(sc.preview) > 0 else None
    write_json(run.path / MANIFEST, manifest)  # last artifact before run.json
    dist.cleanup()
    log.info("%d samples (%d skipped) in %d shards, %.1f MB (%.1f kB per sample)", manifest["count"],
             len(manifest["skipped"]), len(ranges), manifest["bytes"] / 1e6, manifest["bytes_per_sample"] / 1e3)
    return {
        "manifest": MANIFEST, "mode": mode, "count": manifest["count"], "n": n, "skipped": len(manifest["skipped"]),
        "num_classes": head.num_classes, "class_names": class_names, "size": list(size),
        "logits_size": list(logits_size) if logits_size else None, "shards": len(ranges), "world_size": world,
        "teacher": str(cfg.inputs.teacher), "head": str(cfg.inputs.head), "teacher_hash": t_hash, "head_hash": h_hash,
        "samples_per_second": round(rate, 3), "bytes_per_sample": manifest["bytes_per_sample"],
        "preview": preview.name if preview else None,
    }
