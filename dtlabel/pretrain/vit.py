"""A plain vision transformer as a four-level backbone: ViTDet's simple feature pyramid, or DPT's
reassembly of four blocks (``pretrain.vit_pyramid``).

A ViT has one map, at its patch stride (16 for ``vit_tiny_patch16_224``); the regressor wants
strides 4, 8, 16 and 32. Two ways to get them, both outside the ViT, so that the exported network
is exactly ``timm.create_model(name)`` either way:

- ``simple`` (default; ViTDet, Li et al., 2022): from the last block alone, two 2x2 transposed
  convolutions for stride 4, one for stride 8, the map itself for 16 and a 2x2 max-pool for 32. No
  choice of blocks, the fewest parameters; every teacher level is regressed from the last block.
- ``reassemble`` (DPT, Ranftl et al., 2021): blocks at 1/4, 1/2, 3/4 and all of the depth (2, 5, 8,
  11 of 12), each with the final norm and its own resampling: the first block to stride 4 and the
  second to 8 by transposed convolutions, the third as is, the last by a strided 3x3 convolution. The
  teacher's fine levels then pull on early blocks, the coarse ones on the last.

docs/RESULTS.md says which was measured against which.

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


PYRAMIDS = ("simple", "reassemble")


class ViTPyramid(nn.Module):
    """``forward(images (B, 3, H, W)) -> [(B, D/4, H/4, W/4), (B, D/2, H/8, W/8), (B, D, H/16, W/16),
    (B, D, H/32, W/32)]`` for a patch-16 ViT of width D. ``exported`` is the ViT alone."""

    def __init__(self, name: str, kind: str = "simple") -> None:
        super().__init__()
        import timm

        if kind not in PYRAMIDS:
            raise ConfigError(f"pretrain.vit_pyramid={kind}: choose one of {list(PYRAMIDS)}")
        self.kind = kind

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
        self.to32: nn.Module = nn.MaxPool2d(2)
        self.feature_info = _Info([d // 4, d // 2, d, d], [4, 8, 16, 32])
        self.to16: nn.Module = nn.Identity() if self.patch == 16 else nn.MaxPool2d(2)
        if kind == "reassemble":
            depth = len(self.vit.blocks)
            self.blocks = sorted({max(0, depth * k // 4 - 1) for k in (1, 2, 3, 4)})
            if len(self.blocks) != 4:
                raise ConfigError(f"pretrain.vit_pyramid=reassemble needs 4 blocks or more; {name} has {depth}")
            self.to32 = nn.Conv2d(d, d, 3, stride=2, padding=1)
            if self.patch == 8:  # the first map is at stride 8 already: a 2x2 max-pool brings the third to 16
                self.to16 = nn.Sequential(nn.Conv2d(d, d, 1), nn.MaxPool2d(2))
                self.to32 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(d, d, 3, stride=2, padding=1))

    @property
    def exported(self) -> nn.Module:
        """What pretrain saves: the ViT, loadable strictly into ``timm.create_model(name)``."""
        return self.vit

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "reassemble":
            maps = self.vit.forward_intermediates(images, indices=self.blocks, norm=True, output_fmt="NCHW",
                                                  intermediates_only=True)   # 4 x (B, D, h, w), normed
            return [self.to4(maps[0]), self.to8(maps[1]), self.to16(maps[2]), self.to32(maps[3])]
        h, w = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]   # (B, h*w, D), normed
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        s16 = self.to16(grid)
        return [self.to4(grid), self.to8(grid), s16, self.to32(s16)]
