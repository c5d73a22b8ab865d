"""``dtlabel synthesize``: a pseudo-labeled data set from a labeler (a head on a teacher's features, a
student, or an ensemble of them), in tar shards.

Two sources of images:

- sampled (``--n N``): the teacher samples image ``i`` from seed ``base_seed + i`` (its configured
  sampler, DDIM by default, ``synth.sample_steps`` steps) and reads its features with the same seed;
- real (``--images DIR``): image ``i`` is the ``i``-th file of the sorted recursive listing of DIR,
  resized to ``synth.size`` (default ``data.size``, what students train at) and encoded with the
  noise seed ``base_seed + i``;
- a data set's pool (neither option, ``data=...``): its label-free pool without the labeler's labeled
  and validation images (``data.pseudo_label_pool``), read like ``--images``.

The labeler (:mod:`dtlabel.synth.labelers`) is ``--head HEAD_RUN`` (the head on the teacher's
features), ``--labeler RUN`` (a train-head or a train-student run; a student reads the images alone
and needs no ``--teacher`` unless the mode samples) or ``--ensemble RUN RUN ...`` (the mean of the
members' probabilities; uncertainty = their Jensen-Shannon divergence). It turns the images into
probabilities, a hard label, an uncertainty map and a per-image score (format: :mod:`dtlabel.synth.shards`). Shard ``j`` holds indices ``[j*S, (j+1)*S)`` and rank
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

from dtlabel import dist, interrupts
from dtlabel.data import data_size
from dtlabel.data.folder import list_images
from dtlabel.device import precision, select_device, training_amp
from dtlabel.errors import ConfigError, DataError, ModelError, RunError
from dtlabel.io import read_json, write_json
from dtlabel.labeling import ImageList, image_batch, sampled_batch
from dtlabel.runs import DESCRIPTOR, Run
from dtlabel.synth.labelers import Labeler, load_labeler
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


def _pool_images(cfg: DictConfig, labeler: Labeler) -> tuple[ImageList, dict[str, Any]]:
    """The data set's label-free pool (never validation or test images) without the labeler's labeled
    and validation images (every member's): what ``synthesize data=...`` labels when given neither --n
    nor --images."""
    from dtlabel.data import build_data, pseudo_label_pool

    bundle = build_data(cfg.data)
    trained_on = labeler.meta.get("data")
    if trained_on and trained_on != bundle.name:
        raise ConfigError(f"the labeler {labeler.path} was trained on data set '{trained_on}' but the configured data "
                          f"set is '{bundle.name}': pass data={trained_on} data.root=... to label its pool, --images DIR "
                          "to label a folder, or --n N to sample")
    if bundle.labeled is not None and list(bundle.labeled.class_names) != labeler.class_names:
        raise ModelError(f"the labeler {labeler.path} predicts classes {labeler.class_names} but data set {bundle.name} "
                         f"has {list(bundle.labeled.class_names)}; use a model trained on this data set's class list")
    held = [*(labeler.meta.get("label_ids") or []), *(labeler.meta.get("val_ids") or [])]
    pool, ids, excluded = pseudo_label_pool(bundle, held)
    log.info("synthesize: the label-free pool of %s, %d images (%d of the labeler's labeled / validation images left "
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
def _labeler_paths(cfg: DictConfig) -> list[str]:
    """The labeler's run folders: ``--head`` or ``--labeler`` (one run) or ``--ensemble`` (several)."""
    given = {k: cfg.inputs.get(k) for k in ("head", "labeler", "ensemble") if cfg.inputs.get(k)}
    if len(given) > 1:
        raise ConfigError(f"pass one of --head, --labeler and --ensemble, not {' and '.join('--' + k for k in given)}")
    if not given:
        raise ConfigError("synthesize needs a labeler: --head HEAD_RUN (a train-head run), --labeler RUN (a train-head "
                          "or train-student run) or --ensemble RUN RUN ...")
    value = next(iter(given.values()))
    paths = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if "ensemble" in given and len(paths) < 2:
        raise ConfigError(f"--ensemble needs at least two runs, got {len(paths)}; use --labeler for one")
    return paths


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    sc = cfg.synth
    _check_options(sc)
    paths = _labeler_paths(cfg)
    images_root, files = (None, None)
    if cfg.inputs.get("images"):
        images_root, files = _image_list(str(cfg.inputs.images))
    # neither --n nor --images: the configured data set's label-free pool (read once the labeler is known)
    from_pool = files is None and cfg.get("n") is None
    n = _count(cfg, files) if not from_pool else 0
    files = files[:n] if files is not None else None
    mode = "image" if files is not None or from_pool else "sample"
    if mode == "sample" and not cfg.inputs.get("teacher"):
        raise ConfigError("synthesize --n needs --teacher DIR (a fit-teacher run folder or a local diffusers model "
                          "folder) to sample from; --images DIR or a data set's pool can be labeled by a student alone")
    if cfg.inputs.get("teacher"):
        resolve_model_root(str(cfg.inputs.teacher))  # "not found" before loading anything

    device = dist.init_from_env(select_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    cfg.amp = training_amp(str(cfg.amp), bool(sc.get("cpu_bf16", False)), device)  # synth.cpu_bf16 under amp=auto
    labeler, teacher = load_labeler(paths, cfg.inputs.get("teacher"), cfg.teacher, device, str(cfg.amp))
    t_hash, l_hash = (teacher.teacher_hash() if teacher is not None else None), labeler.hash()
    images: ImageList | None = None
    source: dict[str, Any] | None = None
    if files is not None and images_root is not None:
        images = ImageList.of_files(files, images_root)
        source = {"folder": str(images_root)}
    elif from_pool:
        images, source = _pool_images(cfg, labeler)
        n = len(images.names)
    # real images default to the size the students train at (the labeler's data size, else data.size),
    # samples to the teacher's
    if mode == "image":
        size = tuple(int(s) for s in (sc.size if sc.get("size") is not None else
                                      labeler.meta.get("data_size") or data_size(cfg.data)))
    else:
        size = tuple(teacher.image_size)
    ds = int(sc.logits_downsample)
    logits_size = (max(1, size[0] // ds), max(1, size[1] // ds)) if ds > 0 else None
    base_seed = int(sc.base_seed) if sc.get("base_seed") is not None else int(cfg.seed)
    per_shard, bs = int(sc.samples_per_shard), int(sc.batch_size)
    steps = (int(sc.sample_steps) if sc.get("sample_steps") is not None else teacher.sample_steps) if mode == "sample" else None
    ranges = shard_ranges(n, per_shard)
    class_names = labeler.class_names

    plan: dict[str, Any] = {
        "mode": mode, "n": n, "samples_per_shard": per_shard, "base_seed": base_seed, "size": list(size),
        "logits_size": list(logits_size) if logits_size else None, "image_format": str(sc.image_format),
        "teacher_hash": t_hash, "head_hash": l_hash, "sample_steps": steps,
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
    writer = ShardWriter(shard_dir, labeler.num_classes, str(sc.image_format), int(sc.jpg_quality), int(sc.queue_size),
                         on_written=bar.update)
    t0 = time.time()
    signum = 0
    # SIGTERM / SIGINT inside: the batch in progress ends, the shards closed so far stay
    with interrupts.deferred():
        try:
            for j in todo:
                first, last = ranges[j]
                writer.open(j, first, last)
                for start in range(first, last + 1, bs):
                    idx = list(range(start, min(last + 1, start + bs)))
                    if mode == "sample":
                        samples = sampled_batch(teacher, labeler, idx, base_seed, steps, size, logits_size,  # type: ignore[arg-type]
                                                float(sc.score_top))
                        writer.add(samples)
                    else:
                        samples, skipped = image_batch(labeler, images, idx, base_seed, size,  # type: ignore[arg-type]
                                                        logits_size, float(sc.score_top), bool(sc.skip_corrupt))
                        writer.add(samples, skipped)
                    if (signum := interrupts.pending()):
                        break
                if signum:
                    break  # this shard stays unfinished (a temporary file --resume removes)
                writer.close(j)
            writer.finish()
        finally:
            bar.close()
    if signum:
        raise interrupts.Interrupted(signum, f"with {len(writer.shards_done)} of this run's {len(todo)} shards written")
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

    manifest = build_manifest(run.path, plan, ranges, class_names, labeler, teacher, cfg, source, world)
    preview = write_preview(run.path, manifest, int(sc.preview), class_names) if int(sc.preview) > 0 else None
    write_json(run.path / MANIFEST, manifest)  # last artifact before run.json
    dist.cleanup()
    log.info("%d samples (%d skipped) in %d shards, %.1f MB (%.1f kB per sample)", manifest["count"],
             len(manifest["skipped"]), len(ranges), manifest["bytes"] / 1e6, manifest["bytes_per_sample"] / 1e3)
    return {
        "manifest": MANIFEST, "mode": mode, "count": manifest["count"], "n": n, "skipped": len(manifest["skipped"]),
        "num_classes": labeler.num_classes, "class_names": class_names, "size": list(size),
        "logits_size": list(logits_size) if logits_size else None, "shards": len(ranges), "world_size": world,
        "teacher": str(cfg.inputs.teacher) if cfg.inputs.get("teacher") else None,
        "head": str(cfg.inputs.head) if cfg.inputs.get("head") else None, "teacher_hash": t_hash, "head_hash": l_hash,
        "labeler": labeler.describe(), "precision": precision(device, str(cfg.amp)),
        "samples_per_second": round(rate, 3), "bytes_per_sample": manifest["bytes_per_sample"],
        "preview": preview.name if preview else None,
    }
