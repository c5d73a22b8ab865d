"""Stable Diffusion teacher: features of the latent UNet, read through the VAE (docs/METHOD.md §2).

Loads a local SD 1.x / 2.x folder as written by ``StableDiffusionPipeline.save_pretrained``:
``model_index.json``, ``unet/`` (``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``),
``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (``CLIPTokenizer``) and ``scheduler/``.
Safety checker and feature extractor are not needed and not loaded.

Images go through the VAE encoder (the posterior *mean* times ``scaling_factor``: deterministic),
get noised at the requested timesteps and run through the UNet conditioned on the embedding of a
fixed prompt (``""`` by default). Strides in the feature spec are relative to the input image
(latent stride times the VAE's 8x).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from dtlabel.errors import ConfigError, ModelError
from dtlabel.teachers.base import register_teacher
from dtlabel.teachers.diffusion import DiffusionTeacher
from dtlabel.teachers.loading import WEIGHTS, load_component, missing_files, read_model_json, resolve_model_root

logger = logging.getLogger(__name__)

__all__ = ["StableDiffusionTeacher"]

_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# the files each component needs (checked at load: an empty tokenizer/ used to end in a traceback)
_NEEDS = {"unet": ("config.json", WEIGHTS), "vae": ("config.json", WEIGHTS), "text_encoder": ("config.json", WEIGHTS),
          "tokenizer": ("vocab.json|tokenizer.json", "merges.txt|tokenizer.json"), "scheduler": ("scheduler_config.json",)}


@register_teacher("stable-diffusion")
class StableDiffusionTeacher(DiffusionTeacher):
    """Teacher on a Stable Diffusion folder (images ``(B, 3, H, W)`` in [-1, 1]).

    Keyword options: those of :class:`~dtlabel.teachers.diffusion.DiffusionTeacher` plus

    - ``prompt``: text the UNet is conditioned on, for features and sampling (default ``""``);
    - ``guidance_scale``: classifier-free guidance of :meth:`sample` (default 1.0 = no guidance;
      > 1 runs an unconditional ``""`` branch too, so use a non-empty ``prompt`` with it).

    Images may have any size that is a multiple of :attr:`size_multiple` (8 x 2 ** (down blocks - 1),
    64 for SD 1.x/2.x); :attr:`image_size` (the size sampling uses) is ``unet.sample_size * 8``.
    """

    # asked before ddpm: a Stable Diffusion folder is the more specific layout
    detect_priority = 10
    folder_hint = "model_index.json with unet/ + vae/ + text_encoder/ + tokenizer/ (Stable Diffusion)"

    def __init__(self, path: str | Path, *, prompt: str = "", guidance_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if float(guidance_scale) < 1.0:
            raise ConfigError(f"guidance_scale must be >= 1.0 (1.0 = no guidance), got {guidance_scale}")
        self.prompt = str(prompt)
        self.guidance_scale = float(guidance_scale)
        self.record(prompt=self.prompt, guidance_scale=self.guidance_scale)
        root = self.root
        if not self.matches(root):
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            raise ModelError(
                f"no Stable Diffusion model in {root}: looked for model_index.json and the subfolders "
                f"{', '.join(_COMPONENTS)}; found {found[:8]}"
            )
        missing = missing_files(root, _NEEDS)
        if missing:
            raise ModelError(f"the Stable Diffusion folder {root} is incomplete: missing {', '.join(missing)}; "
                             "download or save it again (save_pretrained writes every component)")
        self.unet = load_component(UNet2DConditionModel, root, "unet").float()
        self.vae = load_component(AutoencoderKL, root, "vae").float()
        self.text_encoder = load_component(CLIPTextModel, root, "text_encoder").float()
        self.tokenizer = load_component(CLIPTokenizer, root, "tokenizer")
        self.scheduler_config = dict(read_model_json(root / "scheduler" / "scheduler_config.json"))
        self._embeds: dict[tuple[str, str], torch.Tensor] = {}
        self._finish_init()
        logger.info(
            "loaded Stable Diffusion teacher from %s (UNet %.0fM parameters, %dx%d px)",
            root,
            sum(p.numel() for p in self.unet.parameters()) / 1e6,
            *self.image_size,
        )

    @classmethod
    def matches(cls, root: Path) -> bool:
        """True for a folder with ``model_index.json`` and unet/, vae/, text_encoder/, tokenizer/."""
        root = resolve_model_root(root)
        if not (root / "model_index.json").is_file():
            return False
        index = read_model_json(root / "model_index.json")
        return all(c in index for c in _COMPONENTS) and all((root / c).is_dir() for c in _COMPONENTS)

    # ------------------------------------------------------------------ geometry
    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else (s[0], s[1])
        return int(h) * self.latent_factor, int(w) * self.latent_factor

    @property
    def model_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def check_image_size(self, height: int, width: int) -> None:
        """Any size that is a multiple of :attr:`size_multiple`."""
        m = self.size_multiple
        if height % m or width % m:
            ph, pw = -(-height // m) * m, -(-width // m) * m
            raise ConfigError(
                f"images are {height}x{width} but the Stable Diffusion teacher needs multiples of {m}; "
                f"pad or resize to {ph}x{pw}"
            )

    # ------------------------------------------------------------------ VAE
    def _vae_context(self) -> contextlib.AbstractContextManager:
        # SD VAEs overflow in fp16 (diffusers marks them force_upcast): run them in float32
        if self.vae.config.get("force_upcast", True):
            if self.device.type == "cuda":
                return torch.autocast("cuda", enabled=False)
            return contextlib.nullcontext()
        return self._amp_context()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W) in [-1, 1]`` -> latents ``(B, 4, H/8, W/8)`` (posterior mean, scaled)."""
        cfg = self.vae.config
        with self._vae_context():
            z = self.vae.encode(images).latent_dist.mean.float()
        if cfg.get("shift_factor") is not None:
            z = z - cfg.shift_factor
        return z * cfg.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)``, roughly in [-1, 1] (clamped by callers)."""
        cfg = self.vae.config
        z = x0 / cfg.scaling_factor
        if cfg.get("shift_factor") is not None:
            z = z + cfg.shift_factor
        with self._vae_context():
            return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    # ------------------------------------------------------------------ text + UNet
    def prompt_embeds(self, prompt: str | None = None) -> torch.Tensor:
        """CLIP text embedding of ``prompt`` (default: the configured one): ``(1, L, D)``, cached."""
        prompt = self.prompt if prompt is None else prompt
        key = (prompt, str(self.device))
        if key not in self._embeds:
            tok = self.tokenizer(
                prompt,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            kwargs = {}
            if getattr(self.text_encoder.config, "use_attention_mask", False):
                kwargs["attention_mask"] = tok.attention_mask.to(self.device)
            with torch.no_grad():
                self._embeds[key] = self.text_encoder(tok.input_ids.to(self.device), **kwargs)[0].float()
        return self._embeds[key]

    def _condition(self, n: int, guidance: bool = False) -> torch.Tensor:
        cond = self.prompt_embeds().expand(n, -1, -1)
        if guidance:
            return torch.cat([self.prompt_embeds("").expand(n, -1, -1), cond])
        return cond

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is None:
            cond = self._condition(x.shape[0])
        return self._run_unet(x, t, encoder_hidden_states=cond)

    def _predict(self, x: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Prediction with classifier-free guidance when ``guidance_scale > 1`` (batch: uncond, cond)."""
        n = x.shape[0]
        with self._amp_context():
            if guidance_scale <= 1.0:
                return self._unet(x, t.expand(n), self._condition(n)).float()
            out = self._unet(torch.cat([x, x]), t.expand(2 * n), self._condition(n, guidance=True)).float()
        uncond, cond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> StableDiffusionTeacher:
        self._embeds = {}  # device or dtype changed: recompute the prompt embedding lazily
        return super()._apply(fn, *args, **kwargs)
