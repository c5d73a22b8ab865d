"""The pretrained network: a timm CNN backbone (or a ViT with a simple feature pyramid, ``vit.py``) + an
UPerNet-shaped feature regressor (docs/METHOD.md §3).

The backbone is ``timm.create_model(name, features_only=True)`` with its four stages at strides 4, 8,
16 and 32 (``feature_info``); the regressor is sized from the backbone's ``feature_info`` channels
and the teacher's :class:`~dtlabel.features.FeatureSpec`, as smp sizes a decoder from an encoder:

- a pyramid pooling module (pool scales 1, 2, 3, 6) on the last stage, then a 3x3 conv;
- 1x1 lateral convs on the other stages, a top-down path (bilinear upsampling + addition), a 3x3
  conv per level; every conv is followed by BatchNorm + ReLU, all at ``width`` channels;
- one 1x1 conv per teacher map, from the backbone level matched with it, to the map's channels;
- for mix distillation, a 1x1 conv from the finest level to class logits.

Each teacher map is matched with one level (:func:`match_levels`): the level whose spatial size is
closest to the map's, given the backbone's and the teacher's input sizes (the cpu preset's teacher
runs at half the data resolution, so its stride-8 map pairs with the backbone's stride-16 level).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dtlabel.errors import ConfigError
from dtlabel.features import FeatureSpec

STRIDES = (4, 8, 16, 32)


def create_backbone(name: str, size: Sequence[int] | None = None, vit_pyramid: str = "simple") -> nn.Module:
    """``timm.create_model(name, features_only=True, pretrained=False)`` keeping the stages at
    strides 4-32, or for a plain vision transformer its ``vit_pyramid`` (:mod:`.vit`);
    ``ConfigError`` for an unknown name, a network without such stages or (ViT) a data ``size``
    its patches do not divide."""
    import timm

    from dtlabel.backbones import is_vision_transformer

    if is_vision_transformer(name):
        from dtlabel.pretrain.vit import ViTPyramid

        pyramid = ViTPyramid(name, vit_pyramid)
        if size is not None and (int(size[0]) % pyramid.patch or int(size[1]) % pyramid.patch):
            raise ConfigError(f"data.size={list(size)}: pretrain.backbone={name} cuts images into {pyramid.patch}x"
                              f"{pyramid.patch} patches; use a size divisible by {pyramid.patch}")
        return pyramid

    try:
        probe = timm.create_model(name, features_only=True, pretrained=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise ConfigError(f"pretrain.backbone={name}: not a timm CNN with features_only ({msg}); "
                          "try resnet18, resnet50, convnext_tiny") from None
    reductions = list(probe.feature_info.reduction())
    if not all(s in reductions for s in STRIDES):
        raise ConfigError(f"pretrain.backbone={name}: feature strides {reductions}; dtlabel needs stages at "
                          f"strides {list(STRIDES)}")
    indices = tuple(reductions.index(s) for s in STRIDES)
    return timm.create_model(name, features_only=True, pretrained=False, out_indices=indices)


def match_levels(spec: FeatureSpec, teacher_size: Sequence[int], image_size: Sequence[int],
                 mapping: Mapping[str, int] | None = None) -> dict[str, int]:
    """``{teacher map name: backbone level (0-3, strides 4-32)}``: ``mapping`` where given, else the
    level whose size ``image_size / stride`` is nearest (in log scale) to the map's."""
    out: dict[str, int] = {}
    given = dict(mapping or {})
    unknown = [k for k in given if k not in spec.names]
    if unknown:
        raise ConfigError(f"pretrain.mapping names {unknown}, not teacher maps; maps: {list(spec.names)}")
    for name, _, stride in spec:
        if name in given:
            level = int(given[name])
            if not 0 <= level < len(STRIDES):
                raise ConfigError(f"pretrain.mapping.{name}={level}: expected a level 0-{len(STRIDES) - 1}")
            out[name] = level
            continue
        size = math.log(teacher_size[0] / stride)
        out[name] = min(range(len(STRIDES)), key=lambda lv: abs(math.log(image_size[0] / STRIDES[lv]) - size))
    return out


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureRegressor(nn.Module):
    """FPN + PPM over backbone features ``[(B, C_l, H / s_l, W / s_l)]`` -> levels ``[(B, width, ...)]``."""

    def __init__(self, in_channels: Sequence[int], width: int = 256, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        last = int(in_channels[-1])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(int(s)), _conv(last, width, 1)) for s in pool_scales)
        self.ppm_out = _conv(last + len(pool_scales) * width, width, 3)
        self.laterals = nn.ModuleList(_conv(int(c), width, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(_conv(width, width, 3) for _ in in_channels[:-1])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        top = feats[-1]
        pooled = [F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for p in self.ppm]
        levels = [lat(f) for lat, f in zip(self.laterals, feats[:-1])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in range(len(levels) - 1, 0, -1):  # top-down: coarse into fine
            levels[i - 1] = levels[i - 1] + F.interpolate(levels[i], size=levels[i - 1].shape[-2:], mode="bilinear",
                                                          align_corners=False)
        return [s(x) for s, x in zip(self.smooth, levels[:-1])] + [levels[-1]]


class DistillationNet(nn.Module):
    """Backbone + regressor + one 1x1 projection per teacher map (+ class logits for mix distillation).

    ``forward(images (B, 3, H, W) in [-1, 1]) -> ({teacher map name: (B, C_t, H / s_l, W / s_l)}, logits or
    None)``, the logits ``(B, num_classes, H / 4, W / 4)`` on the finest level.
    """

    def __init__(self, backbone: nn.Module, spec: FeatureSpec, levels: Mapping[str, int], width: int = 256,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = list(spec.names)
        self.levels = dict(levels)
        self.regressor = FeatureRegressor(backbone.feature_info.channels(), width)
        self.projections = nn.ModuleList(nn.Conv2d(width, int(c), 1) for _, c, _ in spec)
        self.logits = nn.Conv2d(width, num_classes, 1) if num_classes else None

    @property
    def exported_backbone(self) -> nn.Module:
        """What pretrain saves: the timm ``features_only`` CNN, or a ViT without its pyramid."""
        return getattr(self.backbone, "exported", self.backbone)

    def forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        levels = self.regressor(self.backbone(images))
        maps = {n: proj(levels[self.levels[n]]) for n, proj in zip(self.names, self.projections)}
        return maps, (self.logits(levels[0]) if self.logits is not None else None)
