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
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from dtlabel import dist, interrupts
from dtlabel.data import data_size
from dtlabel.data.folder import list_images
from dtlabel.device import precision, select_device, training_amp
from dtlabel.errors import ConfigError, DataError, ModelError, RunError
from dtlabel.io import write_json
from dtlabel.labeling import ImageList, image_batch, sampled_batch
from dtlabel.runs import Run
from dtlabel.synth.labelers import Labeler, load_labeler
from dtlabel.labeling_set import LABELING_FILE, check_stores_latents, write_labeling_set
from dtlabel.synth.plan import check_plan, prepare_folder, shards_to_write, write_shards
from dtlabel.synth.shards import MANIFEST, SHARD_DIR, shard_complete, shard_ranges
from dtlabel.synth.writer import ShardWriter
from dtlabel.teachers import resolve_model_root, teacher_from_config

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- inputs
def _check_options(sc: DictConfig) -> None:
    """What the ``synth`` schema cannot say (types and ranges are dtlabel.schema.SynthSection's)."""
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
    n = int(raw)  # a whole number >= 1: the schema's
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
    limit = cfg.synth.get("pool_images")
    if limit is not None and int(limit) < len(ids):
        log.info("synthesize: its first %d images only (synth.pool_images; null labels the whole pool)", int(limit))
        ids = list(ids)[:int(limit)]
    return ImageList.of_source(pool, ids), {"data": bundle.name, "root": str(cfg.data.get("root")),
                                            "excluded": excluded, "pool_images": limit}


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


@dataclass
class _Job:
    """What a run labels and how: the mode (sample | image), the count, the labeler (and teacher), the
    real images and where they come from, the image and logits sizes, the seeds and sampler steps."""

    mode: str
    n: int
    labeler: Labeler
    teacher: Any
    images: ImageList | None
    source: dict[str, Any] | None
    size: tuple[int, int]
    logits_size: tuple[int, int] | None
    base_seed: int
    steps: int | None
    device: Any

    def label(self, idx: list[int], sc: DictConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Samples ``idx`` in the shard format, and those skipped as unreadable (real images only)."""
        if self.mode == "sample":
            return sampled_batch(self.teacher, self.labeler, idx, self.base_seed, self.steps,  # type: ignore[arg-type]
                                 self.size, self.logits_size, float(sc.score_top)), None
        return image_batch(self.labeler, self.images, idx, self.base_seed, self.size,  # type: ignore[arg-type]
                           self.logits_size, float(sc.score_top), bool(sc.skip_corrupt))


def _job(cfg: DictConfig) -> _Job:
    """Check the inputs, choose the device (and join torchrun's processes), load the labeler (and
    teacher), list the images: the run's :class:`_Job`."""
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
    cfg.amp = training_amp(str(cfg.amp), bool(sc.get("cpu_bf16", False)), device)  # synth.cpu_bf16 under amp=auto
    labeler, teacher = load_labeler(paths, cfg.inputs.get("teacher"), cfg.teacher, device, str(cfg.amp))
    images: ImageList | None = None
    source: dict[str, Any] | None = None
    if files is not None and images_root is not None:
        images, source = ImageList.of_files(files, images_root), {"folder": str(images_root)}
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
    steps = (int(sc.sample_steps) if sc.get("sample_steps") is not None else teacher.sample_steps) if mode == "sample" else None
    return _Job(mode, n, labeler, teacher, images, source, size, logits_size, base_seed, steps,  # type: ignore[arg-type]
                device)


def _plan(job: _Job, sc: DictConfig, rank: int) -> dict[str, Any]:
    """``plan.json``: everything the bytes of a sample depend on (a restart must match it)."""
    plan: dict[str, Any] = {
        "mode": job.mode, "n": job.n, "samples_per_shard": int(sc.samples_per_shard), "base_seed": job.base_seed,
        "size": list(job.size), "logits_size": list(job.logits_size) if job.logits_size else None,
        "image_format": str(sc.image_format), "teacher_hash": job.teacher.teacher_hash() if job.teacher is not None else None,
        "head_hash": job.labeler.hash(), "sample_steps": job.steps,
        "sampler": job.teacher.sampler if job.mode == "sample" else None,
    }
    if job.images is not None:  # only rank 0 hashes the files (it writes the plan; the others check the rest)
        plan["files"] = [{"file": name, "sha256": job.images.sha256(i)} if rank == 0 else {"file": name}
                         for i, name in enumerate(job.images.names)]
    return plan


def _write(run: Run, job: _Job, sc: DictConfig, ranges: list[tuple[int, int]], quiet: bool) -> float:
    """This rank's unwritten shards, labeled and written; returns its samples per second."""
    rank, world = dist.rank(), dist.world_size()
    mine, todo = shards_to_write(run.path, len(ranges), rank, world, bool(sc.verify_resume))
    n_todo = sum(ranges[j][1] - ranges[j][0] + 1 for j in todo)
    src = job.source or {}
    log.info("synthesize (%s): %d samples in %d shards of %d, %d rank(s); this rank: %d shards to write "
             "(%d already done), %d samples; image %dx%d, %s, batch %d%s", job.mode, job.n, len(ranges),
             int(sc.samples_per_shard), world, len(todo), len(mine) - len(todo), n_todo, job.size[0], job.size[1],
             sc.image_format, int(sc.batch_size),
             f", {job.teacher.sampler} {job.steps} steps" if job.mode == "sample" else
             f", from {src.get('folder') or 'the label-free pool of data set ' + str(src.get('data'))}")
    bar = tqdm(total=n_todo, unit="sample", desc=f"synthesize r{rank}" if world > 1 else "synthesize",
               disable=quiet or rank > 0, smoothing=0.1)
    writer = ShardWriter(run.path / SHARD_DIR, job.labeler.num_classes, str(sc.image_format), int(sc.jpg_quality),
                         int(sc.queue_size), on_written=bar.update, encode_workers=int(sc.encode_workers))
    t0 = time.time()
    try:  # SIGTERM / SIGINT: the batch in progress ends, the shards closed so far stay
        signum = write_shards(writer, todo, ranges, int(sc.batch_size), lambda idx: job.label(idx, sc))
    finally:
        bar.close()
    if signum:
        raise interrupts.Interrupted(signum, f"with {len(writer.shards_done)} of this run's {len(todo)} shards written")
    seconds = time.time() - t0
    rate = n_todo / seconds if seconds > 0 and n_todo else 0.0
    log.info("rank %d: %d samples in %.1fs (%.2f samples/s)", rank, n_todo, seconds, rate)
    return rate


def _finish(run: Run, job: _Job, cfg: DictConfig, plan: dict[str, Any], ranges: list[tuple[int, int]],
            rate: float) -> dict[str, Any]:
    """Rank 0, once every rank's shards are committed: the manifest (last artifact), the preview and
    the run descriptor."""
    from dtlabel.synth.manifest import build_manifest, write_preview

    sc, world = cfg.synth, dist.world_size()
    missing = [j for j in range(len(ranges)) if not shard_complete(run.path / SHARD_DIR, j, verify=False)]
    if missing:
        raise RunError(f"shards {missing[:5]} are missing after all ranks finished; rerun with --resume")
    class_names = job.labeler.class_names
    manifest = build_manifest(run.path, plan, ranges, class_names, job.labeler, job.teacher, cfg, job.source, world)
    preview = write_preview(run.path, manifest, int(sc.preview), class_names) if int(sc.preview) > 0 else None
    write_json(run.path / MANIFEST, manifest)  # last artifact before run.json
    log.info("%d samples (%d skipped) in %d shards, %.1f MB (%.1f kB per sample)", manifest["count"],
             len(manifest["skipped"]), len(ranges), manifest["bytes"] / 1e6, manifest["bytes_per_sample"] / 1e3)
    return {
        "manifest": MANIFEST, "mode": job.mode, "count": manifest["count"], "n": job.n,
        "skipped": len(manifest["skipped"]), "num_classes": job.labeler.num_classes, "class_names": class_names,
        "size": list(job.size), "logits_size": plan["logits_size"], "shards": len(ranges), "world_size": world,
        "teacher": str(cfg.inputs.teacher) if cfg.inputs.get("teacher") else None,
        "head": str(cfg.inputs.head) if cfg.inputs.get("head") else None, "teacher_hash": plan["teacher_hash"],
        "head_hash": plan["head_hash"], "labeler": job.labeler.describe(), "precision": precision(job.device, str(cfg.amp)),
        "samples_per_second": round(rate, 3), "bytes_per_sample": manifest["bytes_per_sample"],
        "preview": preview.name if preview else None,
    }


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    if cfg.get("for_labeling"):
        return _for_labeling(run, cfg, args)
    job = _job(cfg)
    rank = dist.rank()
    plan = _plan(job, cfg.synth, rank)
    if rank == 0:
        prepare_folder(run.path, plan)
    dist.barrier()  # the run folder, the shard folder and plan.json exist from here on
    if rank > 0:
        check_plan(run.path, {k: v for k, v in plan.items() if k != "files"})
    ranges = shard_ranges(job.n, int(cfg.synth.samples_per_shard))
    rate = _write(run, job, cfg.synth, ranges, bool(getattr(args, "quiet", False)))
    dist.barrier()  # every rank's shards are committed
    descriptor = _finish(run, job, cfg, plan, ranges, rate) if rank == 0 else {}
    dist.cleanup()
    return descriptor


def _for_labeling(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    """``--for-labeling``: ``--n`` samples and their latents into RUN, a labeling set for a person
    (:mod:`dtlabel.labeling_set`); no labeler, no shards."""
    labelers = [f"--{k}" for k in ("head", "labeler", "ensemble") if cfg.inputs.get(k)]
    if labelers or cfg.inputs.get("images"):
        given = labelers or ["--images"]
        raise ConfigError(f"--for-labeling draws samples for a person to label; drop {' and '.join(given)}")
    if cfg.get("n") is None or not cfg.inputs.get("teacher"):
        raise ConfigError("--for-labeling needs --n K (how many samples to label) and --teacher DIR (a GAN teacher)")
    if dist.world_size() > 1:
        raise ConfigError("--for-labeling writes a few samples in one process; run it without torchrun")
    teacher = teacher_from_config(str(cfg.inputs.teacher), cfg.teacher, amp=str(cfg.amp)).to(select_device(cfg.device))
    check_stores_latents(teacher)
    n = int(cfg.n)
    base_seed = int(cfg.synth.base_seed) if cfg.synth.get("base_seed") is not None else int(cfg.seed)
    with tqdm(total=n, desc="synthesize --for-labeling", unit="sample", disable=bool(getattr(args, "quiet", False))) as bar:
        record = write_labeling_set(run.path, teacher, n, base_seed, progress=bar)
    log.info("%d samples to label in %s/images (%dx%d); label them in CVAT or Label Studio, then: dtlabel import-labels "
             "%s --from EXPORT --format cvat|labelstudio|png", n, run.path, *record["size"], run.path)
    return {"mode": "for-labeling", "count": n, "base_seed": base_seed, "labeling": LABELING_FILE,
            "teacher_hash": record["teacher_hash"]}
