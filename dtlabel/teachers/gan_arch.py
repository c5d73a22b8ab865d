"""The GAN teacher's networks: a compact generator for few images, its discriminator and the encoder
that inverts real images into the generator's latent.

The generator follows FastGAN (Liu et al., ICLR 2021; docs/METHOD.md, "GAN teachers"), the design
made for pools of a hundred to a few thousand images: a latent ``z`` becomes a map at stride 32 of
the output, five up-sampling blocks (nearest x2, 3x3 convolution, GLU, twice) double it to the full
size, and skip-layer excitation lets the coarse maps gate the channels of the fine ones (stride 32
gates stride 2, stride 16 gates stride 1), the cheap long-range path that replaces StyleGAN's
mapping network. Batch normalisation as in FastGAN: it trains on batch statistics (which keeps
the samples of a batch apart; measured, a generator with per-pixel normalisation instead collapsed to
one image within 40 steps on the default data) and a teacher runs in eval mode on its running
statistics, so a sample's features do not depend on the other samples of its batch. One addition
for a teacher: ``forward(z, features=True)`` returns the block outputs at strides 32, 16, 8 and 4 of
the image, what DreamTeacher reads from a GAN (docs/METHOD.md §2).

The discriminator mirrors it (five stride-2 blocks, LeakyReLU, no normalisation, He-initialised;
R1 regularises it; StyleGAN's minibatch standard deviation before its logit) and returns its block
outputs too, the perceptual features of the encoder's loss. The encoder is the same trunk ending in
a linear map to ``z``. All three are plain ``nn.Module``s built from their
recorded keyword arguments (``kwargs``), so an exported folder loads without the training code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dtlabel.errors import ConfigError

GAN_FORMAT = "dtlabel-gan/1"
GAN_DESCRIPTOR = "gan.json"  # an exported GAN folder's descriptor (written last: the folder is complete)
#: the generator's levels: the map at stride 2**LEVELS of the output is the first one
LEVELS = 5
#: the strides of the maps a teacher reads (the first four levels of the generator)
FEATURE_STRIDES = (32, 16, 8, 4)


def check_gan_size(size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of a GAN's images; both must be multiples of 32 (the generator's first map is 1/32)."""
    h, w = int(size[0]), int(size[1])
    m = 2 ** LEVELS
    if h < m or w < m or h % m or w % m:
        raise ConfigError(f"a GAN teacher's images must be multiples of {m} on each side, got {h}x{w}; "
                          f"set fit.size (e.g. [{max(m, h // m * m)}, {max(m, w // m * m)}])")
    return h, w


def level_channels(width: int, max_channels: int) -> list[int]:
    """Channels at strides 32, 16, 8, 4, 2, 1: ``width`` at full size, doubling per halving, capped."""
    return [min(int(max_channels), int(width) * 2 ** (LEVELS - i)) for i in range(LEVELS + 1)]


class UpBlock(nn.Module):
    """``(B, c_in, h, w) -> (B, c_out, 2h, 2w)``: nearest x2, then (3x3 conv, batch norm, GLU) twice."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 2 * c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(2 * c_out)
        self.conv2 = nn.Conv2d(c_out, 2 * c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.glu(self.norm1(self.conv1(x)), dim=1)
        return F.glu(self.norm2(self.conv2(x)), dim=1)


class SkipExcitation(nn.Module):
    """FastGAN's skip-layer excitation: a coarse map ``(B, c_low, h, w)`` -> channel gates ``(B, c_high, 1, 1)``."""

    def __init__(self, c_low: int, c_high: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Conv2d(c_low, c_high, 4), nn.LeakyReLU(0.1),
                                  nn.Conv2d(c_high, c_high, 1), nn.Sigmoid())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class Generator(nn.Module):
    """``z (B, z_dim)`` -> images ``(B, 3, H, W)`` in [-1, 1] (and, with ``features=True``, the maps
    ``{"g.s32": (B, C, H/32, W/32), "g.s16", "g.s8", "g.s4"}``)."""

    def __init__(self, size: Sequence[int] = (32, 32), z_dim: int = 32, width: int = 8, max_channels: int = 128) -> None:
        super().__init__()
        self.kwargs = {"size": list(check_gan_size(size)), "z_dim": int(z_dim), "width": int(width),
                       "max_channels": int(max_channels)}
        h, w = self.kwargs["size"]
        self.z_dim, self.base = int(z_dim), (h // 2 ** LEVELS, w // 2 ** LEVELS)
        ch = level_channels(width, max_channels)
        self.channels = ch
        self.init = nn.Linear(self.z_dim, 2 * ch[0] * self.base[0] * self.base[1], bias=False)
        self.init_norm = nn.BatchNorm2d(2 * ch[0])
        self.blocks = nn.ModuleList(UpBlock(ch[i], ch[i + 1]) for i in range(LEVELS))
        self.excite = nn.ModuleList([SkipExcitation(ch[0], ch[4]), SkipExcitation(ch[1], ch[5])])
        self.to_rgb = nn.Conv2d(ch[LEVELS], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, features: bool = False):  # noqa: ANN201 - images, or (images, maps)
        x = F.glu(self.init_norm(self.init(z).view(z.shape[0], 2 * self.channels[0], *self.base)), dim=1)
        maps = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 3:
                x = self.excite[0](maps[0], x)      # stride 32 gates stride 2
            elif i == 4:
                x = self.excite[1](maps[1], x)      # stride 16 gates stride 1
            maps.append(x)
        images = torch.tanh(self.to_rgb(x))
        if not features:
            return images
        return images, {f"g.s{s}": m for s, m in zip(FEATURE_STRIDES, maps)}


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2))


class Trunk(nn.Module):
    """The discriminator's and encoder's body: ``(B, 3, H, W)`` -> the maps at strides 2 ... 32.

    Eleven convolutions without normalisation: under PyTorch's default initialisation (a gain of
    about 1/sqrt(3) per layer) the signal and its gradient shrink to a few thousandths by the logit,
    and a discriminator at chance for its first hundreds of steps lets the generator collapse. He
    initialisation for LeakyReLU(0.2) keeps the activations' scale through the depth."""

    def __init__(self, width: int, max_channels: int) -> None:
        super().__init__()
        ch = level_channels(width, max_channels)[::-1]  # strides 1 ... 32
        self.from_rgb = nn.Sequential(nn.Conv2d(3, ch[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(_down(ch[i], ch[i + 1]) for i in range(LEVELS))
        self.out_channels = ch[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.from_rgb(x)
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps


class Discriminator(nn.Module):
    """Images ``(B, 3, H, W)`` -> logits ``(B,)`` (real > 0), and with ``features=True`` its block maps."""

    def __init__(self, size: Sequence[int] = (32, 32), width: int = 8, max_channels: int = 128) -> None:
        super().__init__()
        self.kwargs = {"size": list(check_gan_size(size)), "width": int(width), "max_channels": int(max_channels)}
        self.trunk = Trunk(width, max_channels)
        c = self.trunk.out_channels
        # StyleGAN's minibatch standard deviation: one more channel, how much the images of a group of
        # MBSTD_GROUP differ; a generator that collapses to one image is then plain to see
        self.head = nn.Sequential(nn.Conv2d(c + 1, c, 3, padding=1), nn.LeakyReLU(0.2))
        self.logit = nn.Conv2d(c, 1, 1)
        nn.init.kaiming_normal_(self.head[0].weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(self.head[0].bias)

    def forward(self, x: torch.Tensor, features: bool = False):  # noqa: ANN201 - logits, or (logits, maps)
        maps = self.trunk(x)
        last = maps[-1]
        logits = self.logit(self.head(torch.cat([last, minibatch_std(last)], dim=1))).mean(dim=(1, 2, 3))
        return (logits, maps) if features else logits


MBSTD_GROUP = 4


def minibatch_std(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, h, w)``: the standard deviation over each group of ``MBSTD_GROUP`` consecutive images
    (fewer if the batch does not divide), averaged over channels and positions, for every member."""
    b = x.shape[0]
    g = next(k for k in range(min(MBSTD_GROUP, b), 0, -1) if b % k == 0)
    y = x.float().view(g, b // g, *x.shape[1:])
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B / g,)
    return std.repeat(g)[:, None, None, None].expand(b, 1, *x.shape[2:]).to(x.dtype)


class Encoder(nn.Module):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> latents ``(B, z_dim)`` of the generator (the inversion)."""

    def __init__(self, size: Sequence[int] = (32, 32), z_dim: int = 32, width: int = 8, max_channels: int = 128) -> None:
        super().__init__()
        self.kwargs = {"size": list(check_gan_size(size)), "z_dim": int(z_dim), "width": int(width),
                       "max_channels": int(max_channels)}
        self.trunk = Trunk(width, max_channels)
        self.head = nn.Linear(self.trunk.out_channels, int(z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)[-1].mean(dim=(2, 3)))
