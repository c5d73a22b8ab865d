"""Tiny random-weight teachers (diffusion models in diffusers format, a GAN folder) for tests and
``--preset tiny``.

Both builders write ordinary ``save_pretrained`` folders (safetensors + JSON configs) that the
teachers in this package, or any diffusers user, load with ``from_pretrained``. Nothing is
downloaded: the CLIP tokenizer of the tiny Stable Diffusion folder is built from a byte-level
vocabulary written here.

- :func:`build_tiny_ddpm`: a ``DDPMPipeline`` folder (``UNet2DModel`` + ``DDPMScheduler``), about
  0.4 MB, 32 px by default.
- :func:`build_tiny_sd`: a Stable-Diffusion-1.x-shaped folder (``UNet2DConditionModel``,
  ``AutoencoderKL`` with an 8x downsampling, ``CLIPTextModel`` + ``CLIPTokenizer``,
  ``PNDMScheduler``), about 1 MB, 64 px images -> 8x8 latents by default.
- :func:`build_tiny_gan`: a dtlabel GAN folder (generator + encoder, ``gan.json``), about 0.2 MB.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from dtlabel.teachers.gan import save_gan
from dtlabel.teachers.gan_arch import Encoder, Generator
from dtlabel.teachers.loading import quiet_progress_bars

logger = logging.getLogger(__name__)

__all__ = ["TINY_DDPM_UNET", "build_tiny_ddpm", "build_tiny_gan", "build_tiny_sd", "tiny_ddpm_unet_config", "write_tiny_clip_vocab"]

# UNet2DModel kwargs of the tiny DDPM (sample_size is filled in by the builder).
TINY_DDPM_UNET: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}


def tiny_ddpm_unet_config(sample_size: int | tuple[int, int] = 32) -> dict:
    """Return the ``UNet2DModel`` kwargs of the tiny DDPM at ``sample_size`` (int or (H, W))."""
    return {**TINY_DDPM_UNET, "sample_size": sample_size}


def build_tiny_ddpm(path: str | Path, sample_size: int | tuple[int, int] = 32, seed: int = 0) -> Path:
    """Write a tiny random ``DDPMPipeline`` folder at ``path`` and return ``path``.

    The folder holds ``model_index.json``, ``unet/`` (``UNet2DModel``, 3 resolutions, one attention
    block, ~100k parameters) and ``scheduler/`` (``DDPMScheduler``, 1000 linear-beta steps).
    ``sample_size`` is the image size in pixels (int or ``(H, W)``); it must be a multiple of 4.
    Weights are drawn with ``torch.manual_seed(seed)`` so the folder is reproducible.
    """
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**tiny_ddpm_unet_config(sample_size))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    with quiet_progress_bars():
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=True)
    logger.info("wrote tiny DDPM (%d parameters) to %s", sum(p.numel() for p in unet.parameters()), path)
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


# A few merges so that common letters pair up; enough to exercise BPE, small enough to stay tiny.
_TINY_MERGES = ["t h", "th e</w>", "a n", "i n", "o n", "e r", "r e", "a t", "e n", "o r"]


def write_tiny_clip_vocab(folder: str | Path) -> tuple[Path, Path]:
    """Write a byte-level CLIP ``vocab.json`` + ``merges.txt`` (~530 tokens) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    for merge in _TINY_MERGES:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_sd(path: str | Path, sample_size: int = 64, seed: int = 0) -> Path:
    """Write a tiny random Stable-Diffusion-1.x-style folder at ``path`` and return ``path``.

    Layout as on the Hub: ``model_index.json``, ``unet/`` (``UNet2DConditionModel``, 3 resolutions,
    cross-attention dim 32), ``vae/`` (``AutoencoderKL``, 4 latent channels, 8x downsampling),
    ``text_encoder/`` (``CLIPTextModel``: hidden 32, 2 layers), ``tokenizer/`` (byte-level BPE
    built offline) and ``scheduler/`` (``PNDMScheduler`` with the SD 1.x betas).
    ``sample_size`` is the image size in pixels, a multiple of 32 (latents are ``sample_size // 8``).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if sample_size % 32:
        raise ValueError(f"sample_size must be a multiple of 32 for the tiny SD model, got {sample_size}")
    path.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = write_tiny_clip_vocab(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(path / "tokenizer"), model_max_length=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
            cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=sample_size,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with quiet_progress_bars():
        pipe.save_pretrained(path, safe_serialization=True)
    # keep the hand-written BPE files beside whatever the tokenizer saved (they define it offline)
    logger.info("wrote tiny Stable Diffusion to %s (tokenizer files %s, %s)", path, vocab_file.name, merges_file.name)
    return path


def build_tiny_gan(path: str | Path, size: int | Sequence[int] = 32, seed: int = 0, encoder: bool = True) -> Path:
    """A tiny random-weight GAN folder at ``path``, ``size`` px (``encoder``: with its inversion encoder)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = Generator(hw, z_dim=16, width=4, max_channels=32)
        enc = Encoder(hw, z_dim=16, width=4, max_channels=32) if encoder else None
    return save_gan(path, gen, enc, {"trained_steps": 0, "size": list(hw), "seed": int(seed)})
