"""A plain vision transformer as a four-level backbone: ViTDet's simple feature pyramid.

A ViT has one map, at its patch stride (16 for ``vit_tiny_patch16_224``); the regressor wants
strides 4, 8, 16 and 32. Following ViTDet (Li et al., 2022), the pyramid is built from the last
block alone: two 2x2 transposed convolutions for stride 4, one for stride 8, the map itself for
16 and a 2x2 max-pool for 32. Chosen over DPT-style reassembly of four intermediate blocks because
it needs no choice of blocks, adds the fewest parameters and keeps the ViT untouched, so that the
exported network is exactly ``timm.create_model(name)``; the two were not measured against each
other (docs/RESULTS.md says which was run).

The ViT reads the data set's size (``dynamic_img_size``: its 224-pixel position table is
interpolated), so H and W must be multiples of the patch size. Its classifier head is kept (frozen,
never used) only so the exported state dict loads strictly into ``timm.create_model(name)`` and as
the encoder of an smp DPT student, which also carries one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dtlabel.errors import ConfigError


class _Info:
    """The two ``feature_info`` calls the regressor and the checks make (timm's FeatureInfo shape)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int]) -> None:
        self._channels, self._reductions = list(channels), list(reductions)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)


def _up(cin: int, cout: int) -> nn.Module:
    return nn.ConvTranspose2d(cin, cout, 2, stride=2)


class ViTPyramid(nn.Module):
    """``forward(images (B, 3, H, W)) -> [(B, D/4, H/4, W/4), (B, D/2, H/8, W/8), (B, D, H/16, W/16),
    (B, D, H/32, W/32)]`` for a patch-16 ViT of width D. ``exported`` is the ViT alone."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(name, pretrained=False, dynamic_img_size=True)
        self.vit.reset_classifier(self.vit.num_classes)  # keep the head's shape: timm.create_model(name)
        for p in self.vit.get_classifier().parameters():
            p.requires_grad_(False)  # never used: the optimiser and DDP leave it alone
        self.patch = int(self.vit.patch_embed.patch_size[0])
        if self.patch not in (8, 16):
            raise ConfigError(f"pretrain.backbone={name}: patch size {self.patch}; the simple feature pyramid is "
                              "built for patch 16 (or 8) vision transformers")
        d = int(self.vit.embed_dim)
        if self.patch == 16:
            self.to4: nn.Module = nn.Sequential(_up(d, d // 2), nn.GroupNorm(1, d // 2), nn.GELU(), _up(d // 2, d // 4))
            self.to8: nn.Module = _up(d, d // 2)
        else:  # patch 8: the map is already at stride 8
            self.to4, self.to8 = _up(d, d // 4), nn.Conv2d(d, d // 2, 1)
        self.to32 = nn.MaxPool2d(2)
        self.feature_info = _Info([d // 4, d // 2, d, d], [4, 8, 16, 32])
        self.to16: nn.Module = nn.Identity() if self.patch == 16 else nn.MaxPool2d(2)

    @property
    def exported(self) -> nn.Module:
        """What pretrain saves: the ViT, loadable strictly into ``timm.create_model(name)``."""
        return self.vit

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]   # (B, h*w, D), normed
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        s16 = self.to16(grid)
        return [self.to4(grid), self.to8(grid), s16, self.to32(s16)]
