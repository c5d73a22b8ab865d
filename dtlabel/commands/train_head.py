"""``dtlabel train-head --labels N --teacher DIR``: a few-label head on a frozen teacher's features.

1. Check the inputs (head kind, --labels, --teacher, a labeled data set with a test split).
2. Choose N training ids with ``choose_labels`` (``labels.json``) and a validation slice: the data
   set's ``val`` split if it has one, else a seeded slice of the training pool disjoint from the N
   ids. Model selection uses only that slice, never the test split.
3. Train: each step flips / scale-jitters image + mask at ``data.size``, resizes the image to the
   teacher's size and computes the teacher's features **online with fresh noise** (the seed depends
   on epoch and image: the paper's feature-space augmentation); ``head.cache=true`` instead reads
   features of the un-augmented images from a disk cache (``cache_draws`` noise draws per image,
   horizontal flips applied to features + mask). Logits are compared with masks at ``data.size``.
   AdamW, cosine schedule.
4. Evaluate on the test split: ``metrics.json`` (per-class IoU, mIoU, pixel accuracy, also on the
   validation slice), ``overlays.png``, ``iou.png``, ``loss.png``; weights + descriptor in ``head/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dtlabel.data import build_data, choose_labels, data_size
from dtlabel.data.base import DataBundle, LabeledSource
from dtlabel.data.transforms import SegmentationDataset, build_transform
from dtlabel.device import select_device
from dtlabel.errors import ConfigError, DataError
from dtlabel.heads import Head, create_head, head_class, head_options, to_teacher_size
from dtlabel.heads.base import image_score
from dtlabel.io import write_json
from dtlabel.metrics import ConfusionMatrix
from dtlabel.report import overlay, save_bars, save_curve, save_grid
from dtlabel.runs import Run
from dtlabel.teachers import Teacher, teacher_from_config
from dtlabel.teachers.base import resolve_model_root
from dtlabel.teachers.cache import FeatureCache

log = logging.getLogger(__name__)

_EVAL_STREAM = 0  # noise stream of evaluation features; training epoch e uses stream e + 1


def noise_seed(seed: int, stream: int, index: int) -> int:
    """Teacher noise seed of image ``index`` (its position in its split list) in ``stream``.

    Training epoch ``e`` uses stream ``e + 1`` (fresh noise every epoch, the paper's feature-space
    augmentation), evaluation uses stream 0 (the same noise every time, so validation passes compare).
    """
    return ((int(seed) * 1_000_003 + int(stream)) * 1_000_033 + int(index)) % 2**63


def cosine_schedule(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up for ``warmup`` steps, then cosine from 1 to ``min_ratio``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        prog = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    return f


class _Indexed(Dataset):
    """``(index, image, mask)`` so that noise seeds follow images, not batch positions."""

    def __init__(self, ds: SegmentationDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        image, mask = self.ds[k]
        return k, image, mask


class TeacherFeatures:
    """Teacher features of images at the data size: resized to the teacher's size, then computed
    online or read from / written to a :class:`FeatureCache`.

    ``chunk`` bounds the images per teacher forward (null: the whole batch). The UNet's activations
    for ``chunk x timesteps`` images, not the features, dominate peak memory at large sizes; per-image
    noise seeds make the result independent of the chunking.
    """

    def __init__(self, teacher: Teacher, cache: FeatureCache | None = None, chunk: int | None = None) -> None:
        self.teacher, self.cache, self.chunk = teacher, cache, chunk

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        seeds = list(seeds)
        step = int(self.chunk or len(seeds)) or 1
        parts = [self._features(images[s:s + step], seeds[s:s + step]) for s in range(0, len(seeds), step)]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _features(self, images: torch.Tensor, seeds: list[int]) -> dict[str, torch.Tensor]:
        x = to_teacher_size(images, self.teacher.image_size).to(self.teacher.device)
        if self.cache is not None:
            return self.cache.features(self.teacher, x, seeds=seeds)
        return self.teacher.features(x, seed=seeds)


# ---------------------------------------------------------------------------------------------- checks
def _int_option(value: Any, flag: str, what: str) -> int:
    if value is None:
        raise ConfigError(f"train-head needs {flag} ({what})")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} {value!r}: expected an integer ({what})") from None


def _check_options(hc: DictConfig) -> None:
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "log_every", "cache_draws"):
        if int(hc[key]) < 1:
            raise ConfigError(f"head.{key}={hc[key]} must be >= 1")
    for key in ("steps", "micro_batch", "teacher_batch"):
        if hc.get(key) is not None and int(hc[key]) < 1:
            raise ConfigError(f"head.{key}={hc[key]} must be >= 1 or null")
    if int(hc.val_size) < 0 or int(hc.overlays) < 0 or int(hc.warmup_steps) < 0:
        raise ConfigError("head.val_size, head.overlays and head.warmup_steps must be >= 0")
    if str(hc.select) not in ("best", "last"):
        raise ConfigError(f"head.select={hc.select}: expected best or last")
    if hc.get("scale") is not None and (len(hc.scale) != 2 or not 0 < float(hc.scale[0]) <= float(hc.scale[1])):
        raise ConfigError(f"head.scale={list(hc.scale)}: expected [min, max] with 0 < min <= max, or null")


def _check_data(bundle: DataBundle) -> LabeledSource:
    if bundle.labeled is None:
        raise DataError(f"data set {bundle.name} has no labels; train-head needs a labeled data set "
                        "(data=default, data=ccp, data=folder data.root=PATH, data=coco ...)")
    if not bundle.splits.get("train"):
        raise DataError(f"data set {bundle.name} has no training images; set data.splits.train")
    if not bundle.splits.get("test"):
        raise DataError(f"data set {bundle.name} has no test split; set data.splits.test (train-head evaluates on it)")
    return bundle.labeled


def head_kwargs(hc: DictConfig, kind: str) -> dict[str, Any]:
    """The architecture options of ``kind`` from the head config section (``head.<kind with _>``)."""
    section = hc.get(kind.replace("-", "_"))
    opts = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    allowed = head_options(kind)
    return {k: v for k, v in dict(opts).items() if k in allowed}  # type: ignore[arg-type]


def validation_ids(bundle: DataBundle, labels: Sequence[str], n: int, seed: int) -> tuple[list[str], str]:
    """The validation slice and where it came from (``"val"`` split or ``"train pool"``)."""
    if n <= 0:
        return [], "none"
    chosen = set(labels)
    val = [i for i in bundle.splits.get("val") or [] if i not in chosen]  # disjoint even if splits overlap
    origin = "val split"
    if not val:
        val = [i for i in sorted(bundle.splits["train"]) if i not in chosen]
        origin = "train pool minus the labels"
    if len(val) > n:
        val = random.Random(seed * 7919 + 17).sample(sorted(val), n)
    return sorted(val), origin if val else "none"


# ---------------------------------------------------------------------------------------------- evaluation
def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.permute(1, 2, 0).cpu().float() + 1) * 127.5).round().clamp(0, 255).byte().numpy()


@torch.no_grad()
def evaluate(head: Head, feats: TeacherFeatures, source: LabeledSource, ids: Sequence[str], size: tuple[int, int],
             batch_size: int, seed: int, keep: int = 0, num_workers: int = 0) -> tuple[ConfusionMatrix, list, list[float]]:
    """Confusion matrix of ``head`` on ``ids`` at ``size``; also up to ``keep`` samples
    ``(image, mask, pred, uncertainty)`` for pictures and the per-image uncertainty scores."""
    ds = SegmentationDataset(source, ids, build_transform(size, train=False))
    loader = DataLoader(_Indexed(ds), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    scores: list[float] = []
    for idx, images, masks in loader:
        f = feats(images, [noise_seed(seed, _EVAL_STREAM, int(i)) for i in idx])
        probs, unc = head.predict(f, size)
        pred = probs.argmax(1).cpu()
        cm.update(pred, masks)
        scores += image_score(unc).cpu().tolist()
        for b in range(images.shape[0]):
            if len(samples) >= keep:
                break
            samples.append((_to_uint8(images[b]), masks[b].numpy(), pred[b].numpy(), unc[b].cpu().numpy()))
    return cm, samples, scores


# ---------------------------------------------------------------------------------------------- command
def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    hc = cfg.head
    kind = str(hc.kind)
    head_class(kind)  # unknown kind: one line with close matches, before anything else
    n_labels = _int_option(cfg.get("labels"), "--labels N", "how many labeled training images to use")
    if not cfg.inputs.get("teacher"):
        raise ConfigError("train-head needs --teacher DIR (a fit-teacher run folder or a local diffusers model folder)")
    resolve_model_root(str(cfg.inputs.teacher))  # "not found" before reading any data
    _check_options(hc)
    device = select_device(cfg.device)
    seed = int(cfg.seed)
    size = data_size(cfg.data)
    bundle = build_data(cfg.data)
    source = _check_data(bundle)
    label_seed = int(hc.label_seed) if hc.get("label_seed") is not None else seed
    label_ids = choose_labels(source, bundle.splits["train"], n_labels, label_seed)
    teacher = teacher_from_config(str(cfg.inputs.teacher), cfg.teacher, amp=str(cfg.amp)).to(device)
    val_ids, val_origin = validation_ids(bundle, label_ids, int(hc.val_size), label_seed)
    test_ids = list(bundle.splits["test"])
    write_json(run.path / "labels.json", {
        "n": n_labels, "label_seed": label_seed, "ids": label_ids, "pool": "train", "pool_size": len(bundle.splits["train"]),
        "val_ids": val_ids, "val_from": val_origin, "test_size": len(test_ids), "data": bundle.name,
    })
    spec = teacher.feature_spec
    log.info("train-head %s: %d labels of %d, %d validation (%s), %d test; teacher %s %dx%d, features %s (D=%d)",
             kind, n_labels, len(bundle.splits["train"]), len(val_ids), val_origin, len(test_ids), teacher.family,
             *teacher.image_size, ", ".join(spec.names), spec.total_channels)

    torch.manual_seed(seed)
    head = create_head(kind, spec, source.num_classes, **head_kwargs(hc, kind)).to(device)
    cache = None
    if bool(hc.cache):
        cache = FeatureCache(Path(str(hc.cache_dir)) if hc.get("cache_dir") else run.path / "feature_cache")
    feats = TeacherFeatures(teacher, cache, chunk=int(hc.teacher_batch) if hc.get("teacher_batch") else None)

    result = _train(head, feats, source, label_ids, val_ids, size, hc, seed, run.path, int(cfg.num_workers),
                    progress=not getattr(args, "quiet", False))

    test_cm, samples, scores = evaluate(head, feats, source, test_ids, size, int(hc.eval_batch_size), seed,
                                        keep=int(hc.overlays), num_workers=int(cfg.num_workers))
    names = list(source.class_names)
    test = test_cm.summary(names)
    metrics = {
        "units": "percent; IoU of classes absent from both ground truth and prediction is null and not averaged",
        "split": "test", "n_test": len(test_ids), "size": list(size),
        "miou": test["miou"], "pixel_accuracy": test["pixel_accuracy"], "per_class_iou": test["per_class_iou"],
        "classes_counted": test["classes_counted"],
        "confusion_matrix": test_cm.matrix.tolist(),
        "uncertainty": {"kind": head.uncertainty_kind, "mean_image_score": float(np.mean(scores)) if scores else None},
        "val": result["val"], "selected": result["selected"], "labels": n_labels, "head": kind,
    }
    write_json(run.path / "metrics.json", metrics)
    log.info("test: mIoU %.2f, pixel accuracy %.2f (%d images)", test["miou"] or float("nan"),
             test["pixel_accuracy"] or float("nan"), len(test_ids))
    _pictures(run.path, samples, names, source.ignore_index, test, kind, n_labels)

    head.save(run.path / "head", teacher_hash=teacher.teacher_hash(), class_names=names, label_ids=label_ids,
              ignore_index=source.ignore_index, data=bundle.name, data_size=list(size),
              image_size=list(teacher.image_size), teacher=teacher.describe(), val_ids=val_ids, seed=seed)
    return {
        "head": "head", "kind": kind, "num_classes": source.num_classes, "class_names": names,
        "labels": n_labels, "label_ids": label_ids, "teacher_hash": teacher.teacher_hash(),
        "teacher": str(cfg.inputs.teacher), "feature_spec": spec.to_dict(), "data": bundle.name, "size": list(size),
        "steps": result["steps"], "epochs": result["epochs"], "test_miou": test["miou"],
        "val_miou": (result["val"] or {}).get("miou"), "cache": bool(hc.cache),
    }


def _train(head: Head, feats: TeacherFeatures, source: LabeledSource, label_ids: list[str], val_ids: list[str],
           size: tuple[int, int], hc: DictConfig, seed: int, out: Path, num_workers: int,
           progress: bool) -> dict[str, Any]:
    ignore = source.ignore_index
    cached = feats.cache is not None
    scale = tuple(float(s) for s in hc.scale) if hc.get("scale") is not None and not cached else None
    transform = build_transform(size, train=not cached, hflip=bool(hc.hflip), scale=scale, ignore_index=ignore)
    transform.set_random_seed(seed)
    ds = _Indexed(SegmentationDataset(source, label_ids, transform))
    bs = min(int(hc.batch_size), len(ds))
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    per_epoch = len(loader)
    total = int(hc.steps) if hc.get("steps") is not None else int(hc.epochs) * per_epoch
    lr = float(hc.lr) if hc.get("lr") is not None else head.default_lr
    wd = float(hc.weight_decay) if hc.get("weight_decay") is not None else head.default_weight_decay
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd, betas=tuple(float(b) for b in hc.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(int(hc.warmup_steps), total, float(hc.min_lr_ratio)))
    log.info("training %s (%.2fM parameters): %d steps (%d per epoch, batch %d), lr %g, weight decay %g%s",
             head.kind, sum(p.numel() for p in head.parameters()) / 1e6, total, per_epoch, bs, lr, wd,
             ", cached features" if cached else ", online features")
    micro = int(hc.micro_batch) if hc.get("micro_batch") and not head.batch_statistics else bs
    metrics_file = out / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    best: dict[str, Any] = {"miou": -math.inf, "state": None, "summary": None, "epoch": 0, "step": 0}
    history: list[tuple[int, float]] = []
    step, epoch, ema = 0, 0, math.nan
    bar = tqdm(total=total, desc=f"train-head {head.kind}", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    head.train()
    with metrics_file.open("a", encoding="utf-8") as mf:
        while step < total:
            for idx, images, masks in loader:
                if step >= total:
                    break
                g = torch.Generator().manual_seed(noise_seed(seed, epoch + 1, 10**6 + step))
                stream = (epoch % int(hc.cache_draws)) + 1 if cached else epoch + 1
                f = feats(images, [noise_seed(seed, stream, int(i)) for i in idx])
                masks = masks.to(head.device)
                if cached and bool(hc.hflip):  # augmentation in feature space: flip maps and mask together
                    flip = (torch.rand(images.shape[0], generator=g) < 0.5).to(head.device)
                    f = {k: torch.where(flip[:, None, None, None], v.flip(-1), v) for k, v in f.items()}
                    masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
                opt.zero_grad(set_to_none=True)
                losses = _accumulate(head, f, masks, ignore, g, micro, step)
                if float(hc.grad_clip) > 0:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), float(hc.grad_clip))
                opt.step()
                sched.step()
                step += 1
                lv = float(losses["loss"])
                ema = lv if math.isnan(ema) else 0.9 * ema + 0.1 * lv
                history.append((step, lv))
                if step % int(hc.log_every) == 0 or step == total:
                    rec = {"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0],
                           **{k: round(v, 6) for k, v in losses.items()}}
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.4f}", best_val=f"{best['miou']:.1f}" if best["summary"] else "-")
            epoch += 1
            if val_ids and (epoch % int(hc.eval_every) == 0 or step >= total):
                cm, _, _ = evaluate(head, feats, source, val_ids, size, int(hc.eval_batch_size), seed,
                                    num_workers=num_workers)
                head.train()
                summary = cm.summary(list(source.class_names))
                miou = summary["miou"] if summary["miou"] is not None else -math.inf
                mf.write(json.dumps({"step": step, "epoch": epoch, "val_miou": summary["miou"],
                                     "val_pixel_accuracy": summary["pixel_accuracy"]}) + "\n")
                mf.flush()
                log.info("epoch %d (step %d): loss %.4f, validation mIoU %.2f", epoch, step, ema, miou)
                if str(hc.select) == "last" or miou > best["miou"]:
                    best = {"miou": miou, "summary": summary, "epoch": epoch, "step": step,
                            "state": copy.deepcopy(head.state_dict()) if str(hc.select) == "best" else None}
    bar.close()
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    head.eval()
    rule = "best validation mIoU" if (val_ids and str(hc.select) == "best") else "last step"
    selected = {"rule": rule, "epoch": best["epoch"] if val_ids else epoch, "step": best["step"] if val_ids else step}
    if history:
        xs, ys = zip(*history)
        k = max(1, len(ys) // 50)
        smooth = np.convolve(ys, np.ones(k) / k, mode="valid") if len(ys) >= k else np.asarray(ys)
        save_curve(out / "loss.png", {"loss": (xs, ys), f"mean of {k}": (xs[k - 1:], smooth)}, "step", "training loss",
                   title=f"train-head {head.kind}")
    return {"val": best["summary"], "selected": selected, "steps": step, "epochs": epoch}


def _accumulate(head: Head, feats: dict[str, torch.Tensor], masks: torch.Tensor, ignore: int, g: torch.Generator,
                micro: int, step: int) -> dict[str, float]:
    """Forward + backward of one batch in micro-batches of ``micro`` images (gradients accumulate,
    each part weighted by its share of the batch); returns the batch's losses as floats."""
    b = masks.shape[0]
    total: dict[str, float] = {}
    for s in range(0, b, micro):
        part = {k: v[s:s + micro] for k, v in feats.items()}
        losses = head.loss(part, masks[s:s + micro], ignore, generator=g)
        if not torch.isfinite(losses["loss"]):
            raise ConfigError(f"train-head: the loss became {losses['loss'].item()} at step {step}; lower head.lr")
        w = min(micro, b - s) / b
        (losses["loss"] * w).backward()
        for k, v in losses.items():
            total[k] = total.get(k, 0.0) + w * float(v.detach())
    return total


def _pictures(out: Path, samples: list, names: list[str], ignore: int, test: dict[str, Any], kind: str, n: int) -> None:
    import matplotlib

    c = len(names)
    if samples:
        cmap = matplotlib.colormaps["magma"]
        top = max(max(float(s[3].max()) for s in samples), 1e-6)  # one colour scale for every row
        rows = []
        for image, mask, pred, unc in samples:
            u = (cmap(np.clip(unc / top, 0, 1))[..., :3] * 255).astype(np.uint8)
            rows.append([image, overlay(image, mask, c, ignore_index=ignore), overlay(image, pred, c, ignore_index=ignore), u])
        save_grid(out / "overlays.png", rows, titles=["image", "ground truth", "prediction", f"uncertainty (0-{top:.2g} nats)"],
                  class_names=names, suptitle=f"{kind}, {n} labels: test samples")
    values = [v if v is not None else 0.0 for v in test["per_class_iou"].values()]
    miou = test["miou"] if test["miou"] is not None else float("nan")
    save_bars(out / "iou.png", names, values, title=f"{kind}, {n} labels: test mIoU {miou:.1f}")
