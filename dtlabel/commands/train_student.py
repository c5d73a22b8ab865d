"""``dtlabel train-student``: a segmentation-models-pytorch student on pseudo-labels and/or real labels.

Inputs: ``--synth DIR`` (a finished ``dtlabel synthesize`` run, streamed from its shards),
``--labels N`` (N real labeled images, the same deterministic choice as ``train-head`` with the
same N and seed) or both, mixed per batch (``student.real_ratio`` of each batch is real).

Losses:
- real labels: ``CE + dice_weight * Dice`` at ``data.size``;
- pseudo-labels, ``student.synth_loss=soft`` (default): knowledge distillation with temperature
  ``tau`` on the teacher head's stored logits, ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``.
  The comparison happens at the **stored logits' resolution**: the student's logits are
  downsampled there by area averaging (``F.interpolate(mode="area")``), which is cheaper than
  upsampling the stored maps and keeps them as the head produced them;
- pseudo-labels, ``synth_loss=hard``: per-pixel CE on the hard pseudo-labels weighted by the
  confidence ``1 - uncertainty``; ``drop_uncertain`` skips the most uncertain synth images.

Augmentation: real pairs go through albumentations (resize, scale jitter, flips; as train-head).
Synth batches get the same kind of augmentation in torch, one affine per sample applied with
``grid_sample`` to image, label, uncertainty and logits alike (normalised coordinates do not depend
on resolution, so the low-resolution logits stay aligned); this also resizes synth images to
``data.size``.

Each epoch (``student.epoch_steps`` steps; default one pass over the training set) the student is
evaluated on the validation slice (model selection; the data set's ``val`` split, else a seeded
slice of the training pool disjoint from the N labels, never the test split) and on the test split
(curves). ``--resume`` continues from the last epoch checkpoint to the same result. Under torchrun
every process trains on its share of the data (DistributedDataParallel); rank 0 writes files.
AMP on CUDA only. Outputs: ``student/`` (safetensors + ``student.json``, loadable by plain smp),
``metrics.json``, ``metrics.jsonl``, ``overlays.png``, ``iou.png``, ``loss.png``, ``miou.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dtlabel import dist
from dtlabel.commands.train_head import cosine_schedule, validation_ids
from dtlabel.data import build_data, choose_labels, data_size
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.transforms import SegmentationDataset, build_transform
from dtlabel.device import amp_dtype, autocast, select_device
from dtlabel.errors import ConfigError, DataError, RunError
from dtlabel.io import save_with, write_json
from dtlabel.losses import ce_dice_loss, kd_loss, weighted_ce_loss
from dtlabel.metrics import ConfusionMatrix
from dtlabel.report import save_curve
from dtlabel.runs import Run, read_run
from dtlabel.students import StudentSpec, backbone_file, create_student, load_backbone, save_student

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------- checks
def check_options(sc: DictConfig) -> None:
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        if int(sc[key]) < 1:
            raise ConfigError(f"student.{key}={sc[key]} must be >= 1")
    if sc.get("epoch_steps") is not None and int(sc.epoch_steps) < 1:
        raise ConfigError(f"student.epoch_steps={sc.epoch_steps} must be >= 1 or null")
    if int(sc.val_size) < 0 or int(sc.overlays) < 0 or int(sc.warmup_steps) < 0 or int(sc.shuffle_buffer) < 0:
        raise ConfigError("student.val_size, overlays, warmup_steps and shuffle_buffer must be >= 0")
    if str(sc.select) not in ("best", "last"):
        raise ConfigError(f"student.select={sc.select}: expected best or last")
    if str(sc.synth_loss) not in ("soft", "hard"):
        raise ConfigError(f"student.synth_loss={sc.synth_loss}: expected soft (KD on stored logits) or hard")
    if float(sc.tau) <= 0:
        raise ConfigError(f"student.tau={sc.tau} must be > 0")
    if not 0.0 <= float(sc.drop_uncertain) < 1.0:
        raise ConfigError(f"student.drop_uncertain={sc.drop_uncertain} must be in [0, 1)")
    if not 0.0 < float(sc.real_ratio) < 1.0:
        raise ConfigError(f"student.real_ratio={sc.real_ratio} must be in (0, 1) (share of real images per batch)")
    if sc.get("scale") is not None and (len(sc.scale) != 2 or not 0 < float(sc.scale[0]) <= float(sc.scale[1])):
        raise ConfigError(f"student.scale={list(sc.scale)}: expected [min, max] with 0 < min <= max, or null")


def check_data(bundle: DataBundle, command: str) -> LabeledSource:
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; {command} evaluates on a labeled test split "
                        "(data=default, data=ccp, data=folder data.root=PATH ...)")
    if not bundle.splits.get("test"):
        raise DataError(f"data set {bundle.name} has no test split; set data.splits.test ({command} evaluates on it)")
    return bundle.labeled


def smp_kwargs(sc: DictConfig) -> dict[str, Any]:
    kw = OmegaConf.to_container(sc.kwargs, resolve=True) if sc.get("kwargs") is not None else {}
    return dict(kw)  # type: ignore[arg-type]


def check_input_size(model: torch.nn.Module, spec: StudentSpec, size: tuple[int, int]) -> int:
    """One forward + backward pass at ``size`` so that an unsupported resolution fails before
    training; returns the number of parameters that get no gradient (e.g. encoder stages beyond
    ``encoder_depth`` in timm encoders; DDP must then look for unused parameters)."""
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, 3, *size))
        out.float().sum().backward()
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:160]
        raise ConfigError(f"data.size={list(size)} does not suit {spec.arch}/{spec.encoder_name} ({msg}); "
                          "use sizes divisible by 2**encoder_depth (32 for depth 5)") from None
    model.train(was)
    if tuple(out.shape[-2:]) != tuple(size):
        raise ConfigError(f"{spec.arch}/{spec.encoder_name} with {spec.smp_kwargs} predicts at {list(out.shape[-2:])} "
                          f"for inputs of {list(size)}; choose student.kwargs that keep the input resolution")
    unused = sum(1 for p in model.parameters() if p.requires_grad and p.grad is None)
    model.zero_grad(set_to_none=True)
    return unused


def open_synth(path: str, drop_uncertain: float) -> Any:
    """The ``SynthSet`` of a finished synthesize run (``RunError`` with the reason otherwise)."""
    read_run(path, "synthesize", "--synth")
    from dtlabel.synth import SynthSet

    return SynthSet(path, drop_uncertain=drop_uncertain)


# ---------------------------------------------------------------------------------------------- data
class _Real(Dataset):
    def __init__(self, ds: SegmentationDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ds[k]


def epoch_indices(n: int, count: int, seed: int, epoch: int) -> list[int]:
    """``count`` indices into ``n`` items for one epoch: shuffled passes, concatenated (deterministic)."""
    rng = random.Random((seed * 1_000_003 + epoch) * 7919 + 11)
    out: list[int] = []
    while len(out) < count:
        perm = list(range(n))
        rng.shuffle(perm)
        out += perm
    return out[:count]


def collate_synth(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Synth samples (numpy, as :meth:`SynthSet.iter` yields them) -> a batch of tensors."""
    out = {
        "image": torch.stack([torch.from_numpy(np.ascontiguousarray(s["image"])).permute(2, 0, 1) for s in samples]),
        "label": torch.stack([torch.from_numpy(np.ascontiguousarray(s["label"])) for s in samples]),
        "uncertainty": torch.stack([torch.from_numpy(np.ascontiguousarray(s["uncertainty"], dtype=np.float32))
                                    for s in samples]),
        "index": torch.tensor([int(s["index"]) for s in samples]),
    }
    if all(s.get("logits") is not None for s in samples):
        out["logits"] = torch.stack([torch.as_tensor(np.asarray(s["logits"])) for s in samples])
    return out


def augment_synth(batch: dict[str, torch.Tensor], size: tuple[int, int], hflip: bool,
                  scale: tuple[float, float] | None, ignore_index: int, generator: torch.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Resize to ``size`` + flips / scale jitter of a synth batch, on ``device``.

    One affine per sample through ``grid_sample``: bilinear for image, uncertainty and logits,
    nearest for labels; pixels zoomed in from outside get ``ignore_index`` (and weight 0 in KD), images
    black there.
    Returns image (B, 3, H, W) in [-1, 1], label (B, H, W) long, uncertainty (B, H, W), and
    logits (B, C, h, w) float + ``logits_valid`` (B, h, w) when stored.
    """
    image = batch["image"].to(device).float().div_(127.5).sub_(1.0)
    label = batch["label"].to(device).long()
    unc = batch["uncertainty"].to(device).float()
    logits = batch["logits"].to(device).float() if "logits" in batch else None
    b = image.shape[0]
    lo, hi = (float(scale[0]), float(scale[1])) if scale else (1.0, 1.0)
    s = torch.exp(torch.empty(b).uniform_(math.log(lo), math.log(hi), generator=generator)) if hi > lo else torch.full((b,), lo)
    flip = (torch.rand(b, generator=generator) < 0.5) if hflip else torch.zeros(b, dtype=torch.bool)
    identity = bool((s == 1).all()) and not bool(flip.any())
    if identity and tuple(image.shape[-2:]) == tuple(size):
        valid_lo = torch.ones(b, *logits.shape[-2:], dtype=torch.bool, device=device) if logits is not None else None
        out = {"image": image, "label": label, "uncertainty": unc}
        if logits is not None:
            out.update(logits=logits, logits_valid=valid_lo)
        return out
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / s
    theta[:, 1, 1] = 1.0 / s
    theta = theta.to(device)

    def warp(x: torch.Tensor, out_hw: Sequence[int], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        grid = F.affine_grid(theta, [b, x.shape[1], int(out_hw[0]), int(out_hw[1])], align_corners=False)
        y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        valid = (grid.abs() <= 1.0 + 1e-6).all(-1)  # inside the source image
        return y, valid

    img, valid = warp(image, size, "bilinear")
    img = torch.where(valid[:, None], img, torch.full_like(img, -1.0))  # black outside, as albumentations
    lab, _ = warp(label[:, None].float(), size, "nearest")
    u, _ = warp(unc[:, None], size, "bilinear")
    lab = torch.where(valid, lab[:, 0].round().long(), torch.full_like(valid, ignore_index, dtype=torch.long))
    out = {"image": img, "label": lab, "uncertainty": torch.where(valid, u[:, 0], torch.ones_like(u[:, 0]))}
    if logits is not None:
        lg, lvalid = warp(logits, logits.shape[-2:], "bilinear")
        out.update(logits=lg, logits_valid=lvalid)
    return out


class _Stream:
    """The batches of one epoch: real and/or synth parts, ``steps`` of them, identical on resume."""

    def __init__(self, real: _Real | None, n_real: int, synth_ds: Any, n_syn: int, num_workers: int,
                 seed: int, rank: int, world: int) -> None:
        self.real, self.n_real, self.synth_ds, self.n_syn = real, n_real, synth_ds, n_syn
        self.num_workers, self.seed, self.rank, self.world = num_workers, seed, rank, world

    def epoch(self, epoch: int, steps: int) -> Iterator[tuple[Any, Any]]:
        real_it: Iterator[Any] | None = None
        if self.real is not None:
            idx = epoch_indices(len(self.real), steps * self.n_real * self.world, self.seed, epoch)[self.rank::self.world]
            self.real.ds.transform.set_random_seed(self.seed * 7919 + epoch * 104_729 + self.rank)
            real_it = iter(DataLoader(self.real, batch_size=self.n_real, sampler=idx, num_workers=self.num_workers,
                                      drop_last=True, persistent_workers=False))
        syn_it = self._synth(epoch) if self.synth_ds is not None else None
        for _ in range(steps):
            yield (next(real_it) if real_it is not None else None), (next(syn_it) if syn_it is not None else None)

    def _synth(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        k = 0
        while True:
            self.synth_ds.set_epoch(epoch * 1000 + k)
            got = 0
            for batch in DataLoader(self.synth_ds, batch_size=self.n_syn, num_workers=self.num_workers,
                                    collate_fn=collate_synth, drop_last=True):
                got += 1
                yield batch
            if got == 0:
                raise DataError("the synth set yields no full batch on this process; lower student.batch_size")
            k += 1


# ---------------------------------------------------------------------------------------------- evaluation
def to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.permute(1, 2, 0).cpu().float() + 1) * 127.5).round().clamp(0, 255).byte().numpy()


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: LabeledSource, ids: Sequence[str], size: tuple[int, int],
             batch_size: int, device: torch.device, dtype: torch.dtype | None = None, keep: int = 0,
             num_workers: int = 0, rank: int = 0, world: int = 1) -> tuple[ConfusionMatrix, list]:
    """Confusion matrix of ``model`` on ``ids`` at ``size`` (sharded over ranks, summed), and up to
    ``keep`` samples ``(image, mask, pred)`` (rank 0) for pictures."""
    was = model.training
    model.eval()
    ds = SegmentationDataset(source, list(ids)[rank::world], build_transform(size, train=False))
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(ds):
        for images, masks in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            with autocast(device, dtype):
                logits = model(images.to(device))
            pred = logits.float().argmax(1).cpu()
            cm.update(pred, masks)
            for b in range(images.shape[0]):
                if len(samples) >= keep:
                    break
                samples.append((to_uint8(images[b]), masks[b].numpy(), pred[b].numpy()))
    if world > 1:
        m = cm.matrix.clone()
        torch.distributed.all_reduce(m)
        cm.matrix = m
    model.train(was)
    return cm, samples


# ---------------------------------------------------------------------------------------------- command
def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    sc = cfg.student
    check_options(sc)
    kwargs = smp_kwargs(sc)
    n_labels = cfg.get("labels")
    synth_dir = cfg.inputs.get("synth")
    if n_labels is None and not synth_dir:
        raise ConfigError("train-student needs --labels N (real labels), --synth DIR (pseudo-labels) or both")
    if n_labels is not None:
        try:
            n_labels = int(n_labels)
        except (TypeError, ValueError):
            raise ConfigError(f"--labels {n_labels!r}: expected an integer") from None
    from dtlabel.students import check_encoder, resolve_arch

    resolve_arch(str(sc.arch))
    check_encoder(str(sc.encoder))
    if cfg.inputs.get("backbone"):
        backbone_file(str(cfg.inputs.backbone))
    synth = open_synth(str(synth_dir), float(sc.drop_uncertain)) if synth_dir else None

    device = dist.init_from_env(select_device(cfg.device))
    rank, world = dist.rank(), dist.world_size()
    try:
        return _run(run, cfg, sc, kwargs, n_labels, synth, device, rank, world, args)
    finally:
        dist.cleanup()


def _run(run: Run, cfg: DictConfig, sc: DictConfig, kwargs: dict[str, Any], n_labels: int | None, synth: Any,
         device: torch.device, rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    seed = int(cfg.seed)
    size = data_size(cfg.data)
    bundle = build_data(cfg.data)
    source = check_data(bundle, "train-student")
    names = list(source.class_names)
    if synth is not None:
        if int(synth.num_classes) != source.num_classes:
            raise DataError(f"--synth {cfg.inputs.synth} has {synth.num_classes} classes but data set {bundle.name} has "
                            f"{source.num_classes}; use the data set the pseudo-labels were made for")
        if list(synth.class_names) != names:
            log.warning("class names differ between the synth run %s and the data (%s); using the data's",
                        list(synth.class_names), names)
        if str(sc.synth_loss) == "soft" and synth.logits_size is None:
            raise DataError(f"--synth {cfg.inputs.synth} stores no logits, needed by student.synth_loss=soft; "
                            "use student.synth_loss=hard or synthesize with logits")
        if len(synth) < 1:
            raise DataError(f"--synth {cfg.inputs.synth}: no samples left (drop_uncertain={sc.drop_uncertain})")
    label_seed = int(sc.label_seed) if sc.get("label_seed") is not None else seed
    label_ids: list[str] = []
    if n_labels is not None:
        if not bundle.splits.get("train"):
            raise DataError(f"data set {bundle.name} has no training images for --labels; set data.splits.train")
        label_ids = choose_labels(source, bundle.splits["train"], n_labels, label_seed)
    # the head that made the pseudo-labels saw its own labeled images: keep them out of validation too
    head_labels = list(((synth.manifest.get("head") or {}).get("label_ids") or [])) if synth is not None else []
    val_ids, val_origin = validation_ids(bundle, [*label_ids, *head_labels], int(sc.val_size), label_seed)
    test_ids = list(bundle.splits["test"])
    if rank == 0:
        write_json(run.path / "labels.json", {
            "n": n_labels, "label_seed": label_seed, "ids": label_ids, "pool": "train",
            "pool_size": len(bundle.splits.get("train") or []), "val_ids": val_ids, "val_from": val_origin,
            "test_size": len(test_ids), "data": bundle.name,
        })
    dist.barrier()

    torch.manual_seed(seed)
    model, spec = create_student(str(sc.arch), str(sc.encoder), source.num_classes, **kwargs)
    unused = check_input_size(model, spec, size)
    backbone = load_backbone(model, str(cfg.inputs.backbone)) if cfg.inputs.get("backbone") else None
    model.to(device)
    dtype = amp_dtype(device, str(cfg.amp))

    bs = int(sc.batch_size)
    if synth is not None and label_ids:
        n_real = min(bs - 1, max(1, round(bs * float(sc.real_ratio))))
    else:
        n_real = bs if label_ids else 0
    n_syn = bs - n_real
    real = None
    if n_real:
        scale = tuple(float(s) for s in sc.scale) if sc.get("scale") is not None else None
        tf = build_transform(size, train=True, hflip=bool(sc.hflip), scale=scale, ignore_index=source.ignore_index)
        real = _Real(SegmentationDataset(source, label_ids, tf))
    synth_ds = None
    if synth is not None:
        from dtlabel.synth import SynthIterableDataset

        if len(synth) < n_syn * world:
            raise DataError(f"--synth has {len(synth)} samples, fewer than one batch ({n_syn} x {world} processes); "
                            "lower student.batch_size")
        synth_ds = SynthIterableDataset(synth, transform=None, shuffle_buffer=int(sc.shuffle_buffer), seed=seed)
    if sc.get("epoch_steps") is not None:
        epoch_steps = int(sc.epoch_steps)
    elif synth is not None:
        epoch_steps = max(1, len(synth) // (n_syn * world))
    else:
        epoch_steps = max(1, math.ceil(len(label_ids) / (n_real * world)))
    epochs = int(sc.epochs)
    total = epochs * epoch_steps
    stream = _Stream(real, n_real, synth_ds, n_syn, int(cfg.num_workers), seed, rank, world)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=unused > 0)
    opt = torch.optim.AdamW(model.parameters(), lr=float(sc.lr), weight_decay=float(sc.weight_decay),
                            betas=tuple(float(b) for b in sc.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(int(sc.warmup_steps), total, float(sc.min_lr_ratio)))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": {"miou": -math.inf, "summary": None, "epoch": 0, "step": 0},
                             "best_state": None, "losses": [], "curve": []}
    ckpt = run.path / CHECKPOINT
    if run.resumed and ckpt.is_file():
        saved = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
        if state.get("total") not in (None, total):
            raise RunError(f"--resume: the checkpoint in {run.path} was for {state['total']} steps, the config now "
                           f"gives {total}; resume with the same settings")
        log.info("resuming at epoch %d (step %d)", state["epoch"], state["step"])
    state["total"] = total
    mode = "+".join(p for p, on in (("synth", synth is not None), ("real", bool(label_ids))) if on)
    log.info("train-student %s/%s (%.2fM parameters) on %s: %d epochs x %d steps, batch %d (%d real + %d synth)%s, "
             "%d validation (%s), %d test, %d process(es)", spec.arch, spec.encoder_name,
             sum(p.numel() for p in model.parameters()) / 1e6, mode, epochs, epoch_steps, bs, n_real, n_syn,
             f", synth loss {sc.synth_loss}" + (f" tau {sc.tau}" if str(sc.synth_loss) == "soft" else "") if synth else "",
             len(val_ids), val_origin, len(test_ids), world)

    metrics_file = run.path / "metrics.jsonl"
    if rank == 0 and not (run.resumed and ckpt.is_file()):
        metrics_file.unlink(missing_ok=True)
    scale = tuple(float(s) for s in sc.scale) if sc.get("scale") is not None else None
    ignore = source.ignore_index
    bar = tqdm(total=total, initial=state["step"], desc=f"train-student {spec.arch}", dynamic_ncols=True,
               disable=rank > 0 or getattr(args, "quiet", False), smoothing=0.1)
    ema = math.nan
    net.train()
    while state["epoch"] < epochs:
        epoch = state["epoch"]
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 31 + rank)
        records = []
        for real_batch, syn_batch in stream.epoch(epoch, epoch_steps):
            losses = _step(net, opt, scaler, real_batch, syn_batch, n_real, n_syn, sc, size, scale, ignore, gen,
                           device, dtype, state["step"])
            sched.step()
            state["step"] += 1
            lv = losses["loss"]
            ema = lv if math.isnan(ema) else 0.9 * ema + 0.1 * lv
            state["losses"].append([state["step"], lv])
            if state["step"] % int(sc.log_every) == 0 or state["step"] == total:
                records.append({"step": state["step"], "epoch": epoch, "lr": sched.get_last_lr()[0],
                                **{k: round(v, 6) for k, v in losses.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", best_val=f"{state['best']['miou']:.1f}" if state["best"]["summary"] else "-")
        state["epoch"] = epoch + 1
        val_s = None
        if val_ids:
            cm, _ = evaluate(model, source, val_ids, size, int(sc.eval_batch_size), device, dtype,
                             num_workers=int(cfg.num_workers), rank=rank, world=world)
            val_s = cm.summary(names)
        cm, _ = evaluate(model, source, test_ids, size, int(sc.eval_batch_size), device, dtype,
                         num_workers=int(cfg.num_workers), rank=rank, world=world)
        test_s = cm.summary(names)
        state["curve"].append([state["epoch"], state["step"], val_s["miou"] if val_s else None, test_s["miou"]])
        records.append({"step": state["step"], "epoch": state["epoch"], "val_miou": val_s["miou"] if val_s else None,
                        "test_miou": test_s["miou"], "test_per_class_iou": test_s["per_class_iou"]})
        miou = val_s["miou"] if val_s and val_s["miou"] is not None else -math.inf
        if str(sc.select) == "last" or not val_ids or miou > state["best"]["miou"]:
            state["best"] = {"miou": miou, "summary": val_s, "epoch": state["epoch"], "step": state["step"]}
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log.info("epoch %d/%d (step %d): loss %.4f, validation mIoU %s, test mIoU %s", state["epoch"], epochs,
                 state["step"], ema, _fmt(val_s), _fmt(test_s))
        if rank == 0:
            with metrics_file.open("a", encoding="utf-8") as mf:
                for r in records:
                    mf.write(json.dumps(r) + "\n")
            ck = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                  "scaler": scaler.state_dict(), "state": state}
            save_with(ckpt, lambda p: torch.save(ck, str(p)))
        dist.barrier()
    bar.close()

    if state["best_state"] is not None and str(sc.select) == "best":
        model.load_state_dict(state["best_state"])
    model.eval()
    test_cm, samples = evaluate(model, source, test_ids, size, int(sc.eval_batch_size), device, dtype,
                                keep=int(sc.overlays) if rank == 0 else 0, num_workers=int(cfg.num_workers),
                                rank=rank, world=world)
    test = test_cm.summary(names)
    selected = {"rule": "best validation mIoU" if (val_ids and str(sc.select) == "best") else "last epoch",
                "epoch": state["best"]["epoch"], "step": state["best"]["step"]}
    if rank == 0:
        metrics = {
            "units": "percent; IoU of classes absent from both ground truth and prediction is null and not averaged",
            "split": "test", "n_test": len(test_ids), "size": list(size),
            "miou": test["miou"], "pixel_accuracy": test["pixel_accuracy"], "per_class_iou": test["per_class_iou"],
            "classes_counted": test["classes_counted"], "confusion_matrix": test_cm.matrix.tolist(),
            "val": state["best"]["summary"], "selected": selected, "labels": n_labels, "synth": mode,
            "student": f"{spec.arch}/{spec.encoder_name}",
        }
        write_json(run.path / "metrics.json", metrics)
        from dtlabel.commands.eval import pictures

        title = f"{spec.arch}/{spec.encoder_name} ({mode})"
        pictures(run.path, samples, names, ignore, test, test_cm, title, confusion=False)
        _curves(run.path, state, title)
        save_student(run.path / "student", model, spec, class_names=names, ignore_index=ignore, data=bundle.name,
                     data_size=list(size), label_ids=label_ids, val_ids=val_ids, seed=seed,
                     synth=str(cfg.inputs.synth) if synth is not None else None, backbone=backbone,
                     test_miou=test["miou"], selected=selected)
    dist.barrier()
    log.info("test: mIoU %s, pixel accuracy %s (%d images)", _fmt(test), test["pixel_accuracy"], len(test_ids))
    return {
        "student": "student", **spec.to_dict(), "num_classes": source.num_classes, "class_names": names,
        "labels": n_labels, "label_ids": label_ids, "synth": str(cfg.inputs.synth) if synth is not None else None,
        "synth_loss": str(sc.synth_loss) if synth is not None else None, "backbone": backbone, "data": bundle.name,
        "size": list(size), "steps": state["step"], "epochs": state["epoch"], "world_size": world,
        "test_miou": test["miou"], "val_miou": (state["best"]["summary"] or {}).get("miou"),
    }


def _fmt(summary: dict[str, Any] | None) -> str:
    return "-" if not summary or summary.get("miou") is None else f"{summary['miou']:.2f}"


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, real_batch: Any, syn_batch: Any,
          n_real: int, n_syn: int, sc: DictConfig, size: tuple[int, int], scale: tuple[float, float] | None,
          ignore: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype | None,
          step: int) -> dict[str, float]:
    """One optimisation step on a real part and/or a synth part (one forward over their concatenation)."""
    images, parts = [], {}
    if real_batch is not None:
        images.append(real_batch[0].to(device))
    syn = None
    if syn_batch is not None:
        syn = augment_synth(syn_batch, size, bool(sc.hflip), scale, ignore, gen, device)
        images.append(syn["image"])
    x = torch.cat(images) if len(images) > 1 else images[0]
    opt.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        logits = net(x)
    logits = logits.float()
    total = logits.new_zeros(())
    bs = x.shape[0]
    if real_batch is not None:
        r = ce_dice_loss(logits[:n_real], real_batch[1].to(device), ignore, float(sc.dice_weight))
        total = total + r["loss"] * (n_real / bs)
        parts.update(real=float(r["loss"].detach()), ce=float(r["ce"]), dice=float(r["dice"]))
    if syn is not None:
        s_logits = logits[bs - n_syn:]
        if str(sc.synth_loss) == "soft":
            s = kd_loss(s_logits, syn["logits"], float(sc.tau), valid=syn["logits_valid"])
        else:
            s = weighted_ce_loss(s_logits, syn["label"], 1.0 - syn["uncertainty"], ignore)
        total = total + s * (n_syn / bs)
        parts["synth"] = float(s.detach())
    if not torch.isfinite(total):
        raise ConfigError(f"train-student: the loss became {total.item()} at step {step}; lower student.lr")
    scaler.scale(total).backward()
    if float(sc.grad_clip) > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(sc.grad_clip))
    scaler.step(opt)
    scaler.update()
    return {"loss": float(total.detach()), **parts}


def _curves(out: Path, state: dict[str, Any], title: str) -> None:
    if state["losses"]:
        xs, ys = zip(*state["losses"])
        k = max(1, len(ys) // 50)
        smooth = np.convolve(ys, np.ones(k) / k, mode="valid")
        save_curve(out / "loss.png", {"loss": (xs, ys), f"mean of {k}": (xs[k - 1:], smooth)}, "step", "training loss",
                   title=f"train-student {title}")
    if state["curve"]:
        series = {}
        ep = [c[0] for c in state["curve"]]
        val = [(e, c[2]) for e, c in zip(ep, state["curve"]) if c[2] is not None]
        test = [(e, c[3]) for e, c in zip(ep, state["curve"]) if c[3] is not None]
        if val:
            series["validation"] = tuple(zip(*val))
        if test:
            series["test"] = tuple(zip(*test))
        if series:
            save_curve(out / "miou.png", series, "epoch", "mIoU (%)", title=f"train-student {title}")  # type: ignore[arg-type]
