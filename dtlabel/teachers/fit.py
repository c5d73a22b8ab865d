"""Training a DDPM teacher (diffusers ``UNet2DModel`` + ``DDPMScheduler``) on unlabeled images.

Deterministic and resumable: the images, flips, noise and timesteps of step ``s`` depend only on
``(seed, s)``, and checkpoints hold the model, EMA, optimiser and schedule state, so a run resumed
from a checkpoint ends with the same weights as an uninterrupted one. Output: a diffusers
``DDPMPipeline`` folder that plain diffusers loads with ``DDPMPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from dtlabel import dist
from dtlabel.data import data_size
from dtlabel.device import amp_dtype, autocast
from dtlabel.errors import ConfigError, DTLabelError, ModelError
from dtlabel.io import atomic_dir, write_text

log = logging.getLogger(__name__)


class TrainingDiverged(DTLabelError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    teacher_dir: Path
    steps: int
    final_loss: float
    images_per_second: float
    stopped_early: bool
    architecture: dict[str, Any] | None = None  # fit.init_from runs: see init_architecture


def _check_size(size: Sequence[int], n_down: int, unet: str) -> None:
    for s in size:
        if int(s) % (2 ** max(0, n_down - 1)):
            raise ConfigError(f"teacher size {list(size)}: each side must be a multiple of {2 ** (n_down - 1)} "
                              f"for {unet} ({n_down} levels); set fit.size or data.size")


def teacher_size(fit: DictConfig, data_cfg: DictConfig) -> tuple[int, int]:
    """The teacher's training resolution ``(H, W)``: ``fit.size`` if set, else ``data.size`` times
    ``fit.scale`` (each side rounded to a multiple of 16, at least 16; scale 1 keeps data.size)."""
    if fit.get("size"):
        size = [int(s) for s in fit.size]
        if len(size) != 2 or any(s < 8 for s in size):
            raise ConfigError(f"fit.size must be [H, W] with both >= 8, got {size}")
        return size[0], size[1]
    h, w = data_size(data_cfg)
    scale = fit.get("scale")
    scale = 1.0 if scale is None else float(scale)
    if not 0.0 < scale <= 1.0:
        raise ConfigError(f"fit.scale must be in (0, 1], got {scale}")
    if scale == 1.0:
        return h, w
    sh, sw = (max(16, round(s * scale / 16) * 16) for s in (h, w))
    return sh, sw


def build_unet(model_cfg: DictConfig | dict, size: Sequence[int]):  # noqa: ANN201
    """A ``UNet2DModel`` for ``size = (H, W)`` images from the ``fit.model`` config."""
    from diffusers import UNet2DModel

    kw = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    _check_size(size, len(kw.get("block_out_channels", ())), "the UNet of fit.model")
    try:
        return UNet2DModel(sample_size=tuple(int(s) for s in size), in_channels=3, out_channels=3, **kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid fit.model settings: {exc}") from None


ARCHITECTURE = "architecture.json"
_SCHEDULER_KEYS = ("num_train_timesteps", "beta_schedule", "prediction_type")


def unet_from_config(config: dict[str, Any], size: Sequence[int]):  # noqa: ANN201
    """A fresh ``UNet2DModel`` of a saved diffusers ``config`` for ``size = (H, W)`` images."""
    from diffusers import UNet2DModel

    _check_size(size, len(config.get("block_out_channels", ())), "the UNet of fit.init_from")
    kw = {k: v for k, v in config.items() if not k.startswith("_")}
    kw["sample_size"] = [int(s) for s in size]
    return UNet2DModel.from_config(kw)


def _make_unet(model_cfg: DictConfig, arch: dict[str, Any] | None, size: Sequence[int]):  # noqa: ANN202
    """The run's UNet: ``fit.model``, or the architecture of ``fit.init_from`` when there is one."""
    return build_unet(model_cfg, size) if arch is None else unet_from_config(arch["unet"], size)


def _unet_location(path: str | Path) -> tuple[Path, str | None]:
    """(model root, UNet subfolder or None) of a run folder, DDPMPipeline folder or bare UNet folder."""
    from dtlabel.teachers.base import resolve_model_root

    root = resolve_model_root(path)
    return root, "unet" if (root / "unet" / "config.json").is_file() else None


def read_architecture(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``architecture.json`` of a ``fit.init_from`` run (None for a run trained from scratch)."""
    f = Path(run_dir) / ARCHITECTURE
    return json.loads(f.read_text()) if f.is_file() else None


def init_architecture(path: str | Path) -> dict[str, Any]:
    """UNet and noise-schedule settings of the DDPM teacher in ``path`` (``fit.init_from``).

    ``path``: a fit-teacher run folder, a ``DDPMPipeline`` folder or a bare ``UNet2DModel`` folder.
    Raises ``ModelError`` (one line, naming the folder) for anything else.
    """
    from dtlabel.teachers.base import read_json

    if not Path(path).expanduser().is_dir():
        raise ModelError(f"fit.init_from {path}: folder not found; pass a fit-teacher run folder or a local "
                         "diffusers DDPM folder")
    root, sub = _unet_location(path)
    unet_dir = root / sub if sub else root
    if (root / "vae").is_dir() or (root / "text_encoder").is_dir():
        raise ModelError(f"fit.init_from {path}: a Stable Diffusion folder; only a DDPM teacher (UNet2DModel) "
                         "can be trained further by fit-teacher")
    if not (unet_dir / "config.json").is_file():
        raise ModelError(f"fit.init_from {path}: no UNet2DModel config.json in {root} or {root / 'unet'}")
    unet = read_json(unet_dir / "config.json")
    if unet.get("_class_name") != "UNet2DModel":
        raise ModelError(f"fit.init_from {path}: {unet_dir / 'config.json'} describes "
                         f"{unet.get('_class_name')!r}, not a UNet2DModel")
    if not any(unet_dir.glob("*.safetensors")):
        raise ModelError(f"fit.init_from {path}: no safetensors weights in {unet_dir}")
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = read_json(sched_file) if sched_file.is_file() else {}
    meta_file = root / "dtlabel_teacher.json"
    meta = read_json(meta_file) if meta_file.is_file() else {}
    return {"unet": unet, "scheduler": {k: sched[k] for k in _SCHEDULER_KEYS if k in sched},
            "init_from": str(path), "init_steps": int(meta.get("trained_steps") or 0),
            "init_seed": meta.get("seed")}


def _load_init_weights(unet: torch.nn.Module, path: str | Path) -> None:
    from diffusers import UNet2DModel

    root, sub = _unet_location(path)
    try:
        src = UNet2DModel.from_pretrained(root, subfolder=sub, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"fit.init_from {path}: cannot load the UNet weights: {str(exc).splitlines()[0]}") from None
    missing, unexpected = unet.load_state_dict({k: v.float() for k, v in src.state_dict().items()}, strict=False)
    if missing or unexpected:
        raise ModelError(f"fit.init_from {path}: the weights do not fit the UNet of its config.json "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")


def _run_architecture(out: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The architecture a run trains: its ``architecture.json`` (written at the start of a run with
    ``fit.init_from``, so that a moved run resumes without the original folder), else that of
    ``fit.init_from``, else None (``fit.model`` from scratch)."""
    arch = read_architecture(out)
    if arch is not None:
        return arch
    if cfg.get("init_from"):
        return init_architecture(str(cfg.init_from))
    return None


def _scheduler_settings(cfg: DictConfig, arch: dict[str, Any] | None) -> dict[str, Any]:
    got = {"num_train_timesteps": int(cfg.num_train_timesteps), "beta_schedule": str(cfg.beta_schedule),
           "prediction_type": str(cfg.prediction_type)}
    if arch:
        got.update(arch.get("scheduler") or {})  # a teacher trained further keeps its noise schedule
    return got


class _StreamSampler(Sampler[list[int]]):
    """Batches of a deterministic stream: position p of the stream is image perm_{p // N}[p % N],
    where perm_e is a permutation seeded by (seed, e). Yields this rank's share of each global batch."""

    def __init__(self, n: int, batch: int, start_step: int, steps: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch, self.start, self.steps, self.seed = n, batch, start_step, steps, seed
        self.rank, self.world = rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))}
        return self._perms[epoch]

    def batch_indices(self, step: int) -> list[int]:
        out = []
        for p in range(step * self.batch, (step + 1) * self.batch):
            out.append(int(self._perm(p // self.n)[p % self.n]))
        return out[self.rank::self.world]

    def __iter__(self):  # noqa: ANN204
        for s in range(self.start, self.steps):
            yield self.batch_indices(s)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


def _lr_lambda(warmup: int, total: int, min_ratio: float = 0.0):  # noqa: ANN202
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        prog = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
    return f


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and (p / "state.pt").is_file())


def fit_ddpm(images: Dataset, out: Path, cfg: DictConfig, size: Sequence[int], device: torch.device,
             seed: int, amp: str = "auto", num_workers: int = 0, progress: bool = True) -> FitResult:
    """Train on ``images`` (a dataset of ``(3, H, W)`` tensors in [-1, 1]); write ``out/teacher``.

    ``cfg`` is the ``fit`` config section (steps, batch_size, lr, ... and ``model``). Checkpoints go to
    ``out/checkpoints`` every ``checkpoint_every`` steps; an existing checkpoint is resumed.
    """
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.training_utils import EMAModel

    steps, batch = int(cfg.steps), int(cfg.batch_size)
    if steps < 1 or batch < 1:
        raise ConfigError(f"fit.steps and fit.batch_size must be >= 1 (got {steps}, {batch})")
    world, rank = dist.world_size(), dist.rank()
    if batch % world:
        raise ConfigError(f"fit.batch_size {batch} must be divisible by the number of processes {world}")
    torch.manual_seed(seed)
    arch = _run_architecture(out, cfg)
    unet = _make_unet(cfg.model, arch, size)
    if arch is not None:
        if not _checkpoints(out / "checkpoints"):
            _load_init_weights(unet, arch["init_from"])
            if dist.is_main() and not (out / ARCHITECTURE).is_file():
                write_text(out / ARCHITECTURE, json.dumps(arch, indent=2))
        log.info("trained further from %s (%d steps before this run); fit.model is not used",
                 arch["init_from"], arch["init_steps"])
    unet = unet.to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    scheduler = DDPMScheduler(**_scheduler_settings(cfg, arch))
    opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg.lr), betas=(0.9, 0.999), weight_decay=float(cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(cfg.warmup_steps), steps, float(cfg.min_lr_ratio)))
    ema = EMAModel(unet.parameters(), decay=float(cfg.ema_decay), use_ema_warmup=True, power=0.75)
    ckpt_dir = out / "checkpoints"
    keep_every = int(cfg.get("keep_every") or 0)
    if str(cfg.get("export_dtype", "fp32")) not in ("fp32", "fp16"):
        raise ConfigError(f"fit.export_dtype={cfg.export_dtype}: expected fp32 or fp16")
    start = 0
    found = _checkpoints(ckpt_dir)
    if found:
        last = found[-1]
        unet.load_state_dict(load_file(str(last / "unet.safetensors"), device=str(device)))
        state = torch.load(last / "state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        ema_w = load_file(str(last / "ema.safetensors"), device=str(device))
        ema.shadow_params = [ema_w[f"p{i}"] for i in range(len(ema.shadow_params))]
        ema.optimization_step = int(state["ema_step"])
        start = int(state["step"])
        log.info("resumed from %s (step %d of %d)", last, start, steps)
        if start >= steps:
            log.info("the checkpoint already reaches fit.steps=%d: exporting only", steps)
    model: torch.nn.Module = unet
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(unet, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = _StreamSampler(len(images), batch, start, steps, seed, rank, world)
    loader = DataLoader(images, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False)
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    metrics = out / "metrics.jsonl"
    elapsed_before = _truncate_metrics(metrics, start)  # earlier sessions' training time: elapsed_s adds up
    log.info("fit-teacher: UNet2DModel %.2fM parameters at %s, %d steps x batch %d on %s (%d process%s)",
             n_params / 1e6, "x".join(map(str, size)), steps, batch, device, world, "es" if world > 1 else "")
    max_seconds = float(cfg.max_minutes) * 60 if cfg.get("max_minutes") is not None else math.inf
    t_start = time.time()
    seen, loss_avg, step, stopped = 0, float("nan"), start, False
    bar = tqdm(total=steps, initial=start, desc="fit-teacher", disable=not (progress and dist.is_main()),
               dynamic_ncols=True, smoothing=0.05)
    model.train()
    try:
        for step, idx_batch in zip(range(start, steps), loader):
            x0 = idx_batch.to(device)
            g = _step_generator(seed, step, rank)
            if cfg.hflip:
                flip = torch.rand(x0.shape[0], generator=g) < 0.5
                x0 = torch.where(flip.to(device)[:, None, None, None], x0.flip(-1), x0)
            noise = torch.randn(x0.shape, generator=g).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g).to(device)
            xt = scheduler.add_noise(x0, noise, t)
            target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
            with autocast(device, dtype):
                pred = model(xt, t).sample
            loss = F.mse_loss(pred.float(), target)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}; lower fit.lr or enable fit.grad_clip")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if float(cfg.grad_clip) > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(unet.parameters(), float(cfg.grad_clip))
            scaler.step(opt)
            scaler.update()
            sched.step()
            ema.step(unet.parameters())
            seen += x0.shape[0] * world
            lv = float(dist.all_reduce_mean(loss.detach()).item())
            loss_avg = lv if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * lv
            done = step + 1
            elapsed = time.time() - t_start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.1f}")
            if dist.is_main() and (done % int(cfg.log_every) == 0 or done == steps):
                rec = {"step": done, "loss": round(lv, 6), "loss_ema": round(loss_avg, 6), "lr": sched.get_last_lr()[0],
                       "images_per_s": round(seen / max(elapsed, 1e-9), 3),
                       "elapsed_s": round(elapsed_before + elapsed, 1)}
                with open(metrics, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log.debug("step %d loss %.5f (avg %.5f) lr %.2e", done, lv, loss_avg, rec["lr"])
            if done % int(cfg.checkpoint_every) == 0 or done == steps:
                _save_checkpoint(ckpt_dir, done, unet, ema, opt, sched, int(cfg.keep_checkpoints), keep_every)
            if elapsed > max_seconds and done < steps:
                log.warning("time budget of %s minutes reached at step %d of %d; checkpointed, continue with --resume",
                            cfg.max_minutes, done, steps)
                _save_checkpoint(ckpt_dir, done, unet, ema, opt, sched, int(cfg.keep_checkpoints), keep_every)
                stopped = True
                break
    except KeyboardInterrupt:
        if step > start:
            _save_checkpoint(ckpt_dir, step, unet, ema, opt, sched, int(cfg.keep_checkpoints), keep_every)
        raise
    finally:
        bar.close()
    done_steps = _checkpoints(ckpt_dir)[-1].name if _checkpoints(ckpt_dir) else "step_0"
    final_step = int(done_steps.split("_")[1])
    if math.isnan(loss_avg) and metrics.is_file():  # nothing trained in this call (already at fit.steps)
        lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        loss_avg = float(json.loads(lines[-1])["loss_ema"]) if lines else loss_avg
    teacher_dir = out / "teacher"
    if dist.is_main():
        export = _make_unet(cfg.model, arch, size)
        ema.copy_to(export.parameters())
        export.eval()
        if str(cfg.get("export_dtype", "fp32")) == "fp16":
            export = export.half()  # half the disk size; teachers compute in float32 after loading
        pipe = DDPMPipeline(unet=export, scheduler=scheduler)
        with atomic_dir(teacher_dir) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_text(tmp / "dtlabel_teacher.json", json.dumps(
                _teacher_meta(final_step, size, seed, arch), indent=2))
    dist.barrier()
    elapsed = time.time() - t_start
    return FitResult(teacher_dir, final_step, loss_avg, seen / max(elapsed, 1e-9), stopped, arch)


def _teacher_meta(step: int, size: Sequence[int], seed: int, arch: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """``dtlabel_teacher.json``: total training steps (those of ``fit.init_from`` included)."""
    meta: dict[str, Any] = {"family": "ddpm", "trained_steps": int(step) + (arch["init_steps"] if arch else 0),
                            "size": [int(s) for s in size], "seed": int(seed)}
    if arch:
        meta.update(run_steps=int(step), init_from=Path(arch["init_from"]).name, init_steps=arch["init_steps"])
    return {**meta, **extra}


def _save_checkpoint(folder: Path, step: int, unet: torch.nn.Module, ema: Any, opt: torch.optim.Optimizer,
                     sched: Any, keep: int, keep_every: int = 0) -> None:
    if not dist.is_main():
        return
    target = folder / f"step_{step:07d}"
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}, str(tmp / "unet.safetensors"))
        save_file({f"p{i}": p.detach().contiguous().cpu() for i, p in enumerate(ema.shadow_params)},
                  str(tmp / "ema.safetensors"))
        torch.save({"step": step, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                    "ema_step": ema.optimization_step}, tmp / "state.pt")
    for old in _checkpoints(folder)[:-max(1, keep)]:
        if keep_every and _step_of(old) % keep_every == 0:
            continue  # kept for good: measuring feature quality against training time
        shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in a fit-teacher run folder."""
    return [_step_of(p) for p in _checkpoints(Path(run_dir) / "checkpoints")]


def export_checkpoint(run_dir: str | Path, step: int, out: str | Path, dtype: str = "fp32") -> Path:
    """Write checkpoint ``step`` of a fit-teacher run (its EMA weights) as a diffusers DDPM folder.

    The run's ``config.yaml`` gives the UNet and scheduler settings. Used to measure how feature
    quality grows with training time (``fit.keep_every`` keeps the checkpoints to compare).
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / f"step_{int(step):07d}"
    if not (ckpt / "ema.safetensors").is_file():
        have = ", ".join(map(str, checkpoint_steps(run_dir))) or "none"
        raise ConfigError(f"{run_dir}: no complete checkpoint at step {step} (have: {have})")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    fit = cfg.fit
    size = teacher_size(fit, cfg.data)
    arch = read_architecture(run_dir)
    unet = _make_unet(fit.model, arch, size)
    ema = load_file(str(ckpt / "ema.safetensors"))
    params = list(unet.parameters())
    if len(ema) != len(params):
        raise ConfigError(f"{ckpt}: {len(ema)} EMA tensors for a UNet with {len(params)} parameters; "
                          "the run's config.yaml does not match its checkpoints")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(ema[f"p{i}"])
    unet.eval()
    if dtype == "fp16":
        unet = unet.half()
    scheduler = DDPMScheduler(**_scheduler_settings(fit, arch))
    out = Path(out)
    with atomic_dir(out) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        write_text(tmp / "dtlabel_teacher.json", json.dumps(
            _teacher_meta(int(step), size, int(cfg.seed), arch, from_run=run_dir.name), indent=2))
    return out


def _truncate_metrics(path: Path, step: int) -> float:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from); return the
    ``elapsed_s`` of the last line kept (0 for a new run)."""
    if not path.is_file():
        return 0.0
    keep, elapsed = [], 0.0
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if rec.get("step", step + 1) <= step:
            keep.append(ln)
            elapsed = float(rec.get("elapsed_s", elapsed))
    write_text(path, "".join(ln + "\n" for ln in keep))
    return elapsed
