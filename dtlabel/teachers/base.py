"""The teacher interface: a frozen diffusion model that turns images into named multi-scale features.

DreamTeacher (PAPER.md §2) reads a diffusion UNet's decoder as a feature extractor: take a real
image ``x0``, draw noise ``eps``, form ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` at a timestep
``t``, run the UNet once and keep the outputs of some decoder blocks. :class:`Teacher` implements
that once for every model family; a family (``ddpm.py``, ``stable_diffusion.py``) only says how to
load its folder, how to move between pixels and the UNet's space (identity or a VAE) and how to
call its UNet.

Feature maps are named ``"{block}@t={t}"`` (``"up_blocks.1@t=50"``), or
``"{block}@t={t1}+{t2}"`` when several timesteps of one block are concatenated along channels,
and carry their own shape metadata in a :class:`FeatureSpec` so heads can size themselves.

Determinism: all noise is drawn on the CPU from ``torch.Generator`` objects seeded by the caller
and then moved, so the same seed gives the same features on CPU and CUDA (up to kernel rounding).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dtlabel.device import amp_dtype
from dtlabel.errors import ConfigError, ModelError, did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureSpec",
    "SampleOutput",
    "Teacher",
    "feature_key",
    "hash_model_folder",
    "resolve_model_root",
]

# Files that define a model folder; their bytes make the teacher hash.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_AMP_CHOICES = ("auto", "fp16", "bf16", "none", "off", "fp32")
_SAMPLE_FEATURE_MODES = ("encode", "capture")


def feature_key(block: str, timesteps: Sequence[int]) -> str:
    """Name of the feature map of ``block`` at ``timesteps``: ``"up_blocks.1@t=50+150"``."""
    return f"{block}@t={'+'.join(str(int(t)) for t in timesteps)}"


@dataclass(frozen=True)
class FeatureSpec:
    """Names, channel counts and strides of a teacher's feature maps, in output order.

    ``strides[i]`` is the input image size divided by the size of map ``i`` (relative to the
    *image*, also for latent-space teachers), so a map of an ``(H, W)`` image is
    ``(channels[i], H // strides[i], W // strides[i])``.
    """

    names: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if not len(self.names) == len(self.channels) == len(self.strides):
            raise ConfigError(
                f"feature spec has {len(self.names)} names, {len(self.channels)} channel counts and "
                f"{len(self.strides)} strides; they must have the same length"
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"feature spec has duplicate names: {list(self.names)}")

    @property
    def total_channels(self) -> int:
        """Sum of the channels of all maps (the per-pixel dimension after upsample + concat)."""
        return sum(self.channels)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        """Yield ``(name, channels, stride)`` per map."""
        return iter(zip(self.names, self.channels, self.strides))

    def index(self, name: str) -> int:
        """Position of map ``name``; raises ``ConfigError`` with close matches if unknown."""
        if name not in self.names:
            raise ConfigError(f"unknown feature {name!r}; known: {list(self.names)}{did_you_mean(name, self.names)}")
        return self.names.index(name)

    def to_dict(self) -> dict[str, list]:
        """JSON-able form: ``{"names": [...], "channels": [...], "strides": [...]}``."""
        return {"names": list(self.names), "channels": list(self.channels), "strides": list(self.strides)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; raises ``ConfigError`` if a field is missing."""
        missing = [k for k in ("names", "channels", "strides") if k not in data]
        if missing:
            raise ConfigError(f"feature spec is missing {missing}; expected keys names, channels, strides")
        return cls(tuple(data["names"]), tuple(data["channels"]), tuple(data["strides"]))


@dataclass
class SampleOutput:
    """Result of :meth:`Teacher.sample`.

    ``images``: ``(n, 3, H, W)`` float32 in [-1, 1]. ``features``: maps named as in
    :attr:`Teacher.feature_spec`, each ``(n, C, H / stride, W / stride)`` float32, or ``None``.
    ``seeds``: the seed of each sample (``seed + i``).
    """

    images: torch.Tensor
    features: dict[str, torch.Tensor] | None
    seeds: list[int]


class _StopForward(Exception):
    """Raised by the last feature hook to skip the rest of the UNet (never leaves this module)."""


def resolve_model_root(path: str | Path) -> Path:
    """Return the folder that holds the diffusers model for ``path``.

    A fit-teacher run folder keeps its model in ``teacher/``; any other folder is returned as is.
    Raises ``ModelError`` if ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"teacher folder not found: {path}; pass --teacher with a fit-teacher run folder or a local "
            "diffusers model folder"
        )
    sub = path / "teacher"
    if sub.is_dir() and ((sub / "model_index.json").is_file() or (sub / "config.json").is_file()):
        return sub
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, raising ``ModelError`` (naming the file) if it is not valid JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}; re-save the model with save_pretrained") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object; re-save the model with save_pretrained")
    return data


def has_safetensors(folder: Path) -> bool:
    """True if ``folder`` holds at least one ``*.safetensors`` weights file."""
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def load_component(cls: Any, root: Path, subfolder: str | None = None) -> Any:
    """``cls.from_pretrained`` from a local folder, offline, preferring safetensors.

    Weights in safetensors are required to be used when present (``use_safetensors=True``); a folder
    with only ``.bin`` files falls back to the libraries' ``weights_only`` loading. Loading errors
    become one-line ``ModelError`` s that name the folder.
    """
    folder = root / subfolder if subfolder else root
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if not _is_tokenizer(cls):
        if has_safetensors(folder):
            kwargs["use_safetensors"] = True
            weights = [p.name for p in folder.glob("*.safetensors")]
            if all(".fp16." in n for n in weights):  # a Hub folder with only the fp16 variant
                kwargs["variant"] = "fp16"
        else:
            logger.warning("no safetensors weights in %s; loading .bin weights with weights_only=True", folder)
    if cls.__module__.startswith("diffusers") and importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # the default needs accelerate and warns without it
    try:
        with quiet_progress_bars():
            return cls.from_pretrained(str(root), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot load {cls.__name__} from {folder}: {first}; check that the folder was written by "
            "save_pretrained and is complete"
        ) from e


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide the diffusers / transformers loading and saving progress bars (library code prints nothing)."""
    toggles = []
    for mod in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = importlib.import_module(mod)
        except ImportError:
            continue
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            toggles.append(lib)
    try:
        yield
    finally:
        for lib in toggles:
            lib.enable_progress_bar()


def _is_tokenizer(cls: Any) -> bool:
    return "Tokenizer" in getattr(cls, "__name__", "")


def _init_params(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def hash_model_folder(root: str | Path, length: int = 16) -> str:
    """Short sha256 of the weights and configs under ``root`` (paths + bytes, sorted).

    Covers ``*.safetensors``, ``*.bin``, ``*.json``, ``*.txt`` and ``*.model`` files, so two folders
    with the same model get the same hash wherever they are, and any change to a weight or a config
    changes it. Hidden files and folders are skipped.
    """
    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in _HASHED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def make_scheduler(cls: Any, config: Mapping[str, Any], **overrides: Any) -> Any:
    """``cls.from_config(config)`` with the ``overrides`` that ``cls`` accepts (others dropped)."""
    accepted = _init_params(cls.__init__)
    return cls.from_config(dict(config), **{k: v for k, v in overrides.items() if k in accepted})


def _first_tensor(output: Any) -> torch.Tensor:
    """The hidden state of a block output: a tensor, or the first element of a tuple / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


class Teacher(torch.nn.Module, ABC):
    """A frozen diffusion model read as a multi-scale feature extractor (and a sampler).

    Subclasses load a folder and implement the pixel <-> model-space maps and the UNet call; this
    class does the noising, the hooks, the early stop, the timestep batching and the sampling loop.

    Common options (keyword arguments of every family, recorded in :attr:`kwargs`):

    - ``blocks``: names of UNet submodules whose outputs are features (``"up_blocks.1"``,
      ``"mid_block"``; any name in ``unet.named_modules()``). Default: every ``up_blocks.*``.
    - ``timesteps``: default timesteps of :meth:`features` (default ``(50,)``).
    - ``concat_timesteps``: concatenate the timesteps of one block along channels (default True).
    - ``noise_draws``: default number of noise draws averaged by :meth:`features` (default 1).
    - ``batch_timesteps``: run all timesteps and noise draws of one call as one UNet batch (fast,
      more memory); False loops over them (default True).
    - ``early_stop``: stop the UNet forward once the last requested block has run (default True).
    - ``amp``: ``"auto"`` (bf16 if the GPU supports it, else fp16), ``"fp16"``, ``"bf16"`` or
      ``"none"``/``"off"``/``"fp32"``; only used on CUDA (as ``dtlabel.device.amp_dtype``), the CPU
      always runs float32.
    - ``sampler``: ``"ddim"`` (default), ``"ddpm"`` or ``"dpm"`` (DPM-Solver++ multistep).
    - ``sample_steps``: denoising steps of :meth:`sample` (default 50); ``eta``: DDIM eta (0.0).
    - ``sample_features``: ``"encode"`` (default) or ``"capture"``, see :meth:`sample`.
    """

    family: ClassVar[str] = ""
    guidance_scale: float = 1.0  # classifier-free guidance of text-conditioned families

    def __init__(
        self,
        path: str | Path,
        *,
        blocks: Sequence[str] | None = None,
        timesteps: Sequence[int] = (50,),
        concat_timesteps: bool = True,
        noise_draws: int = 1,
        batch_timesteps: bool = True,
        early_stop: bool = True,
        amp: str = "auto",
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        sample_features: str = "encode",
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.root = resolve_model_root(path)
        if amp not in _AMP_CHOICES:
            raise ConfigError(
                f"unknown amp {amp!r}; choose one of {list(_AMP_CHOICES)}{did_you_mean(amp, _AMP_CHOICES)}"
            )
        if sampler not in self.samplers():
            raise ConfigError(
                f"unknown sampler {sampler!r}; choose one of {sorted(self.samplers())}"
                f"{did_you_mean(sampler, self.samplers())}"
            )
        if sample_features not in _SAMPLE_FEATURE_MODES:
            raise ConfigError(f"unknown sample_features {sample_features!r}; choose 'encode' or 'capture'")
        if int(noise_draws) < 1:
            raise ConfigError(f"noise_draws must be >= 1, got {noise_draws}")
        if int(sample_steps) < 1:
            raise ConfigError(f"sample_steps must be >= 1, got {sample_steps}")
        self.concat_timesteps = bool(concat_timesteps)
        self.noise_draws = int(noise_draws)
        self.batch_timesteps = bool(batch_timesteps)
        self.early_stop = bool(early_stop)
        self.amp = amp
        self.sampler = sampler
        self.sample_steps = int(sample_steps)
        self.eta = float(eta)
        self.sample_features = sample_features
        self._requested_blocks = tuple(blocks) if blocks is not None else None
        ts_in = (timesteps,) if isinstance(timesteps, int) else timesteps
        self._requested_timesteps = tuple(int(t) for t in ts_in)
        self._block_info: dict[str, tuple[int, int]] | None = None  # block -> (channels, stride)
        self._hash: str | None = None
        self.kwargs: dict[str, Any] = {
            "blocks": list(blocks) if blocks is not None else None,
            "timesteps": list(self._requested_timesteps),
            "concat_timesteps": self.concat_timesteps,
            "noise_draws": self.noise_draws,
            "batch_timesteps": self.batch_timesteps,
            "early_stop": self.early_stop,
            "amp": amp,
            "sampler": sampler,
            "sample_steps": self.sample_steps,
            "eta": self.eta,
            "sample_features": sample_features,
        }

    # ------------------------------------------------------------------ set up by subclasses
    def _finish_init(self) -> None:
        """Validate blocks and timesteps once the subclass has set ``unet`` and ``scheduler_config``."""
        self.requires_grad_(False)
        self.eval()
        names = dict(self.unet.named_modules())
        blocks = self._requested_blocks or tuple(n for n in names if n.count(".") == 1 and n.startswith("up_blocks."))
        if not blocks:
            raise ConfigError("no feature blocks: pass blocks=[...] (e.g. up_blocks.1, mid_block)")
        for b in blocks:
            if not b or b not in names:
                top = [n for n in names if n == "mid_block" or re.fullmatch(r"(down|up)_blocks\.\d+", n)]
                raise ConfigError(
                    f"unknown teacher block {b!r}; blocks are names of UNet submodules such as "
                    f"{', '.join(top)}{did_you_mean(b, names)}"
                )
        if len(set(blocks)) != len(blocks):
            raise ConfigError(f"duplicate teacher blocks: {list(blocks)}")
        self.blocks: tuple[str, ...] = tuple(blocks)
        self.timesteps: tuple[int, ...] = self._check_timesteps(self._requested_timesteps)
        self.noise_scheduler = make_scheduler(_diffusers().DDPMScheduler, self.scheduler_config)

    # ------------------------------------------------------------------ family hooks
    unet: torch.nn.Module
    scheduler_config: dict[str, Any]

    @classmethod
    def matches(cls, root: Path) -> bool:
        """True if the model folder ``root`` holds a model of this family (for ``load_teacher``)."""
        return False

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]:
        """Default image size ``(H, W)`` in pixels (the size the model was trained at)."""

    @property
    @abstractmethod
    def latent_factor(self) -> int:
        """Pixels per UNet-space position (1 for pixel-space models, 8 for SD's VAE)."""

    @property
    @abstractmethod
    def model_channels(self) -> int:
        """Channels of the UNet's input (3 for a pixel DDPM, 4 for SD latents)."""

    @abstractmethod
    def check_image_size(self, height: int, width: int) -> None:
        """Raise ``ConfigError`` if ``(height, width)`` images cannot be used with this teacher."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``images (B, 3, H, W) in [-1, 1]`` to the UNet's clean input ``x0 (B, C, h, w)``."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Map the UNet's clean space ``(B, C, h, w)`` to images ``(B, 3, H, W)`` in [-1, 1]."""

    @abstractmethod
    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Run the UNet on ``x (N, C, h, w)`` at timesteps ``t (N,)`` and return its prediction."""

    def _condition(self, n: int, guidance: bool = False) -> Any:
        """Conditioning for a batch of ``n`` (None for unconditional models)."""
        return None

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def unet_factor(self) -> int:
        """Size multiple the UNet needs in its own space: 2 ** (number of down blocks - 1)."""
        return 2 ** (len(getattr(self.unet, "down_blocks", [None])) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (UNet factor times the latent factor)."""
        return self.unet_factor * self.latent_factor

    @property
    def feature_spec(self) -> FeatureSpec:
        """Spec of :meth:`features` with the configured timesteps."""
        return self.spec_for(self.timesteps)

    def spec_for(self, timesteps: Sequence[int] | None = None) -> FeatureSpec:
        """Spec of :meth:`features` called with ``timesteps`` (default: the configured ones)."""
        ts = self._check_timesteps(timesteps if timesteps is not None else self.timesteps)
        info = self._get_block_info()
        names: list[str] = []
        channels: list[int] = []
        strides: list[int] = []
        for b in self.blocks:
            c, s = info[b]
            groups = [ts] if self.concat_timesteps else [(t,) for t in ts]
            for g in groups:
                names.append(feature_key(b, g))
                channels.append(c * len(g))
                strides.append(s)
        return FeatureSpec(tuple(names), tuple(channels), tuple(strides))

    def samplers(self) -> dict[str, str]:
        """Sampler names accepted by ``sampler=`` -> diffusers scheduler class names."""
        return {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler"}

    def teacher_hash(self) -> str:
        """Short stable hash of the model folder's weights and configs (see :func:`hash_model_folder`)."""
        if self._hash is None:
            self._hash = hash_model_folder(self.root)
        return self._hash

    def describe(self) -> dict[str, Any]:
        """JSON-able record for run descriptors: family + kwargs (to recreate it), hash, spec, classes."""
        return {
            "family": self.family,
            "path": str(self.path),
            "kwargs": dict(self.kwargs),
            "teacher_hash": self.teacher_hash(),
            "feature_spec": self.feature_spec.to_dict(),
            "image_size": list(self.image_size),
            "classes": {name: type(m).__name__ for name, m in self.named_children()},
        }

    def train(self, mode: bool = True) -> Teacher:
        """Teachers are frozen: stay in eval mode (no dropout) whatever ``mode`` is."""
        return super().train(False)

    # ------------------------------------------------------------------ helpers
    def _check_timesteps(self, timesteps: Sequence[int]) -> tuple[int, ...]:
        if isinstance(timesteps, int):
            timesteps = (timesteps,)
        ts = tuple(int(t) for t in timesteps)
        n = int(self.scheduler_config.get("num_train_timesteps", 1000))
        if not ts:
            raise ConfigError("timesteps is empty; pass at least one, e.g. timesteps=[50]")
        bad = [t for t in ts if not 0 <= t < n]
        if bad:
            raise ConfigError(f"timesteps {bad} out of range; the teacher has timesteps 0..{n - 1}")
        if len(set(ts)) != len(ts):
            raise ConfigError(f"duplicate timesteps: {list(ts)}")
        return ts

    def _amp_context(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on CUDA with the configured dtype; nothing on the CPU (float32)."""
        dtype = amp_dtype(self.device, self.amp)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got dtype {images.dtype}; use x / 127.5 - 1")
        self.check_image_size(int(images.shape[2]), int(images.shape[3]))
        images = images.to(self.device, torch.float32)
        lo, hi = torch.stack(torch.aminmax(images)).tolist()  # one device sync
        if lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; map uint8 with x / 127.5 - 1"
            )
        return images

    @contextlib.contextmanager
    def _hooks(self, store: dict[str, torch.Tensor], stop: bool) -> Iterator[None]:
        """Forward hooks that keep a reference to each block's output in ``store``.

        With ``stop``, the hook that completes ``store`` raises ``_StopForward`` so the rest of the
        UNet (remaining decoder blocks, output convs) is skipped.
        """
        wanted = len(self.blocks)

        def make_hook(name: str) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                store[name] = _first_tensor(output)
                if stop and len(store) == wanted:
                    raise _StopForward

            return hook

        handles = [self.unet.get_submodule(b).register_forward_hook(make_hook(b)) for b in self.blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _run_hooked(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any, stop: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One UNet call with feature hooks: ``(block outputs, prediction or None if stopped)``."""
        store: dict[str, torch.Tensor] = {}
        out = None
        with self._hooks(store, stop), self._amp_context():
            try:
                out = self._unet(x, t, cond)
            except _StopForward:
                pass
        missing = [b for b in self.blocks if b not in store]
        if missing:
            raise ConfigError(f"teacher blocks {missing} did not run in the UNet forward; pick other blocks")
        return store, out

    def _get_block_info(self) -> dict[str, tuple[int, int]]:
        """Channels and image-relative stride of each block, from one tiny dry run (cached)."""
        if self._block_info is None:
            size = 2 * self.unet_factor
            x = torch.zeros(1, self.model_channels, size, size, device=self.device)
            t = torch.zeros(1, dtype=torch.long, device=self.device)
            with torch.no_grad():
                store, _ = self._run_hooked(x, t, self._condition(1), stop=True)
            info = {}
            for b in self.blocks:
                out = store[b]
                if out.ndim != 4 or size % out.shape[-1]:
                    raise ConfigError(f"teacher block {b!r} does not output a (B, C, h, w) map; pick another block")
                info[b] = (int(out.shape[1]), size // int(out.shape[-1]) * self.latent_factor)
            self._block_info = info
        return self._block_info

    @staticmethod
    def _seeds(seed: int | Sequence[int], batch: int) -> list[int] | int:
        if isinstance(seed, int):
            return seed
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}; pass one int or one seed per image")
        return seeds

    def _draw_noise(self, shape: tuple[int, ...], seed: int | list[int], draws: int) -> torch.Tensor:
        """``(draws, B, C, h, w)`` standard normal noise drawn on the CPU, then moved.

        An int seed draws the whole batch from one generator; a list draws image ``b`` from its own
        generator seeded ``seed[b]``, so its features do not depend on the rest of the batch.
        """
        b, *rest = shape
        if isinstance(seed, int):
            g = torch.Generator("cpu").manual_seed(seed)
            eps = torch.randn((draws, b, *rest), generator=g)
        else:
            eps = torch.stack(
                [torch.randn((draws, *rest), generator=torch.Generator("cpu").manual_seed(s)) for s in seed], dim=1
            )
        return eps.to(self.device)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(
        self,
        images: torch.Tensor,
        timesteps: Sequence[int] | None = None,
        seed: int | Sequence[int] = 0,
        noise_draws: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Multi-scale teacher features of real images (one noisy UNet pass per timestep).

        Args:
            images: ``(B, 3, H, W)`` float in [-1, 1]; ``H, W`` as allowed by :meth:`check_image_size`.
            timesteps: diffusion timesteps (default: the configured ones). All timesteps share the
                same noise draw, so a block's map at ``t=50`` does not depend on which other
                timesteps are requested.
            seed: an int (one CPU generator for the batch) or one seed per image (each image's noise
                from its own generator: features independent of batch composition; use this for
                caches and synthesis).
            noise_draws: number of noise draws to average (default: the configured ``noise_draws``).

        Returns:
            ``{name: (B, C, H / stride, W / stride) float32}`` on the teacher's device, named and
            ordered as ``spec_for(timesteps)``, at native resolution (heads upsample).
        """
        ts = self._check_timesteps(timesteps if timesteps is not None else self.timesteps)
        draws = int(noise_draws if noise_draws is not None else self.noise_draws)
        if draws < 1:
            raise ConfigError(f"noise_draws must be >= 1, got {draws}")
        images = self._check_images(images)
        n = images.shape[0]
        seeds = self._seeds(seed, n)
        x0 = self.encode(images)
        eps = self._draw_noise(tuple(x0.shape), seeds, draws)
        passes = [(d, t) for d in range(draws) for t in ts]
        chunks = [passes] if self.batch_timesteps else [[p] for p in passes]
        acc: dict[tuple[str, int], torch.Tensor] = {}
        for chunk in chunks:
            t_all = torch.tensor([t for _, t in chunk for _ in range(n)], dtype=torch.long, device=self.device)
            eps_all = torch.cat([eps[d] for d, _ in chunk])
            x_t = self.noise_scheduler.add_noise(x0.repeat(len(chunk), 1, 1, 1), eps_all, t_all)
            store, _ = self._run_hooked(x_t, t_all, self._condition(x_t.shape[0]), stop=self.early_stop)
            for block, out in store.items():
                for k, (_, t) in enumerate(chunk):
                    part = out[k * n : (k + 1) * n].float()
                    acc[(block, t)] = part if (block, t) not in acc else acc[(block, t)] + part
        if draws > 1:
            acc = {k: v / draws for k, v in acc.items()}
        return self._assemble(acc, ts)

    def _assemble(self, acc: Mapping[tuple[str, int], torch.Tensor], ts: Sequence[int]) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for b in self.blocks:
            if self.concat_timesteps:
                maps = [acc[(b, t)] for t in ts]
                feats[feature_key(b, ts)] = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
            else:
                for t in ts:
                    feats[feature_key(b, (t,))] = acc[(b, t)]
        return feats

    # ------------------------------------------------------------------ sampling
    def make_sampler(self, name: str | None = None) -> Any:
        """A fresh diffusers scheduler of kind ``name`` (default: the configured ``sampler``)."""
        name = name or self.sampler
        if name not in self.samplers():
            raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(self.samplers())}")
        cls = getattr(_diffusers(), self.samplers()[name])
        # latent-space models must not clip x0 predictions to [-1, 1]
        return make_scheduler(cls, self.scheduler_config, clip_sample=self.scheduler_config.get("clip_sample", False))

    def _predict(self, x: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Float32 model prediction at ``x (N, C, h, w)`` and scalar ``t`` (text families add guidance)."""
        with self._amp_context():
            return self._unet(x, t.expand(x.shape[0]), self._condition(x.shape[0])).float()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int | None = None,
        return_features: bool = True,
        height: int | None = None,
        width: int | None = None,
        output_device: str | torch.device | None = "cpu",
    ) -> SampleOutput:
        """Draw ``n`` images with the configured sampler, and optionally their features.

        The loop is written out (``set_timesteps``, UNet, ``step``). Sample ``i`` uses its own CPU
        generator seeded ``seed + i`` for its initial noise and every step noise, so sample ``i`` is
        the same whatever ``n`` and ``batch_size`` are; for a large data set call this repeatedly with
        ``seed=base_seed + offset`` (any shard can be regenerated alone).

        Feature modes (``sample_features`` option):

        - ``"encode"`` (default, recommended): run :meth:`features` on the final images with seed
          ``seed + i`` per sample. These are exactly the features a real image gets, so a head
          trained on real-image features transfers to samples without a domain gap.
        - ``"capture"``: keep the hooked block outputs of the sampling step whose timestep is
          nearest to each configured timestep (no extra UNet pass, but the maps come from the
          sampler's own trajectory and a coarser, scheduler-dependent timestep; use it only with a
          head trained on captured features).

        Args:
            n: number of images. seed: base seed. steps: sampler steps (default ``sample_steps``).
            batch_size: images per UNet batch (default: all ``n``). height, width: image size in
                pixels (default :attr:`image_size`). output_device: where results go (None: teacher).

        Returns:
            :class:`SampleOutput` with ``images (n, 3, H, W)`` in [-1, 1] and features as
            :attr:`feature_spec` (or None if ``return_features`` is False).
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        steps = int(steps or self.sample_steps)
        bs = int(batch_size or n)
        h, w = height or self.image_size[0], width or self.image_size[1]
        self.check_image_size(h, w)
        shape = (self.model_channels, h // self.latent_factor, w // self.latent_factor)
        out_dev = torch.device(output_device) if output_device is not None else self.device
        images: list[torch.Tensor] = []
        feats: dict[str, list[torch.Tensor]] = {}
        for start in range(0, n, bs):
            idx = list(range(start, min(n, start + bs)))
            img, f = self._sample_batch([seed + i for i in idx], shape, steps, return_features)
            images.append(img.to(out_dev))
            for k, v in (f or {}).items():
                feats.setdefault(k, []).append(v.to(out_dev))
        features = {k: torch.cat(v) for k, v in feats.items()} if return_features else None
        return SampleOutput(torch.cat(images), features, [seed + i for i in range(n)])

    def _sample_batch(
        self, seeds: list[int], shape: tuple[int, int, int], steps: int, return_features: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        scheduler = self.make_sampler()
        scheduler.set_timesteps(steps, device=self.device)
        x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(self.device)
        x = x * scheduler.init_noise_sigma
        step_kwargs: dict[str, Any] = {}
        step_params = _init_params(scheduler.step)
        if "generator" in step_params:
            step_kwargs["generator"] = gens
        if "eta" in step_params:
            step_kwargs["eta"] = self.eta
        capture = return_features and self.sample_features == "capture"
        capture_at = self._capture_steps(scheduler.timesteps) if capture else {}
        captured: dict[tuple[str, int], torch.Tensor] = {}
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            if i in capture_at:
                store: dict[str, torch.Tensor] = {}
                with self._hooks(store, stop=False):
                    pred = self._predict(x_in, t, self.guidance_scale)
                for b, out in store.items():
                    out = out[-x.shape[0] :].float()  # with guidance the conditional half comes last
                    for ct in capture_at[i]:
                        captured[(b, ct)] = out
            else:
                pred = self._predict(x_in, t, self.guidance_scale)
            x = scheduler.step(pred.float(), t, x, **step_kwargs).prev_sample
        images = self.decode(x).clamp(-1, 1).float()
        if not return_features:
            return images, None
        if self.sample_features == "capture":
            return images, self._assemble(captured, self.timesteps)
        return images, self.features(images, seed=seeds)

    def _capture_steps(self, sched_ts: torch.Tensor) -> dict[int, list[int]]:
        """Map sampling step index -> configured timesteps it is nearest to."""
        out: dict[int, list[int]] = {}
        ts_cpu = sched_ts.detach().cpu().long()
        for t in self.timesteps:
            i = int((ts_cpu - t).abs().argmin())
            if int(ts_cpu[i]) != t:
                logger.info("capture: timestep %d taken at sampling step %d (t=%d)", t, i, int(ts_cpu[i]))
            out.setdefault(i, []).append(t)
        return out

    def extra_repr(self) -> str:
        blocks, ts = list(self.blocks), list(self.timesteps)
        return f"family={self.family!r}, root={str(self.root)!r}, blocks={blocks}, timesteps={ts}"


def _diffusers() -> Any:
    import diffusers

    return diffusers
