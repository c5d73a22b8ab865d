"""The UNet and noise schedule a fit-teacher run trains: from ``fit.model``, or from the teacher
given to ``fit.init_from`` (its ``architecture.json`` travels with the run folder, so a moved run
resumes without the initial teacher's folder), at the resolution :func:`teacher_size` resolves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dtlabel.data import data_size
from dtlabel.errors import ConfigError, ModelError
from dtlabel.io import read_json
from dtlabel.teachers.loading import TEACHER_META


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


def make_unet(model_cfg: DictConfig, arch: dict[str, Any] | None, size: Sequence[int]):  # noqa: ANN202
    """The run's UNet: ``fit.model``, or the architecture of ``fit.init_from`` when there is one."""
    return build_unet(model_cfg, size) if arch is None else unet_from_config(arch["unet"], size)


def _unet_location(path: str | Path) -> tuple[Path, str | None]:
    """(model root, UNet subfolder or None) of a run folder, DDPMPipeline folder or bare UNet folder."""
    from dtlabel.teachers import resolve_model_root

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
    from dtlabel.teachers.loading import shipped_model

    if not Path(path).expanduser().is_dir() and shipped_model(path) is None:
        raise ModelError(f"fit.init_from {path}: folder not found; pass a fit-teacher run folder or a local "
                         "diffusers DDPM folder")
    root, sub = _unet_location(path)
    unet_dir = root / sub if sub else root
    if (root / "vae").is_dir() or (root / "text_encoder").is_dir():
        raise ModelError(f"fit.init_from {path}: a Stable Diffusion folder; only a DDPM teacher (UNet2DModel) "
                         "can be trained further by fit-teacher")
    if not (unet_dir / "config.json").is_file():
        raise ModelError(f"fit.init_from {path}: no UNet2DModel config.json in {root} or {root / 'unet'}")
    unet = read_json(unet_dir / "config.json", ModelError)
    if unet.get("_class_name") != "UNet2DModel":
        raise ModelError(f"fit.init_from {path}: {unet_dir / 'config.json'} describes "
                         f"{unet.get('_class_name')!r}, not a UNet2DModel")
    if not any(unet_dir.glob("*.safetensors")):
        raise ModelError(f"fit.init_from {path}: no safetensors weights in {unet_dir}")
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = read_json(sched_file, ModelError) if sched_file.is_file() else {}
    meta_file = root / TEACHER_META
    meta = read_json(meta_file, ModelError) if meta_file.is_file() else {}
    return {"unet": unet, "scheduler": {k: sched[k] for k in _SCHEDULER_KEYS if k in sched},
            "init_from": str(path), "init_steps": int(meta.get("trained_steps") or 0),
            "init_seed": meta.get("seed")}


def load_init_weights(unet: torch.nn.Module, path: str | Path) -> None:
    from diffusers import UNet2DModel

    root, sub = _unet_location(path)
    try:
        src = UNet2DModel.from_pretrained(root, subfolder=sub, use_safetensors=True, local_files_only=True,
                                          low_cpu_mem_usage=False)  # the default needs accelerate and warns
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"fit.init_from {path}: cannot load the UNet weights: {str(exc).splitlines()[0]}") from None
    missing, unexpected = unet.load_state_dict({k: v.float() for k, v in src.state_dict().items()}, strict=False)
    if missing or unexpected:
        raise ModelError(f"fit.init_from {path}: the weights do not fit the UNet of its config.json "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")


def run_architecture(out: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The architecture a run trains: its ``architecture.json`` (written at the start of a run with
    ``fit.init_from``, so that a moved run resumes without the original folder), else that of
    ``fit.init_from``, else None (``fit.model`` from scratch)."""
    arch = read_architecture(out)
    if arch is not None:
        return arch
    if cfg.get("init_from"):
        return init_architecture(str(cfg.init_from))
    return None


def scheduler_settings(cfg: DictConfig, arch: dict[str, Any] | None) -> dict[str, Any]:
    got = {"num_train_timesteps": int(cfg.num_train_timesteps), "beta_schedule": str(cfg.beta_schedule),
           "prediction_type": str(cfg.prediction_type)}
    if arch:
        got.update(arch.get("scheduler") or {})  # a teacher trained further keeps its noise schedule
    return got
