"""``interpreter``: DreamTeacher's feature interpreter (after BigDatasetGAN), docs/METHOD.md §4.

Per teacher map a 1x1 conv to ``width`` channels; then from the coarsest map to the finest:
bilinear upsampling to the next finer map, concatenation with it, a depthwise-separable 3x3 conv
back to ``width``, GroupNorm + SiLU. Dropout and a 1x1 conv give logits at the finest map's
resolution, upsampled bilinearly to the label size. Trained with cross-entropy + 3.0 x Dice.

Uncertainty: a single model has no ensemble disagreement, so ``predict`` returns the **predictive
entropy** ``H(p) = -sum_c p_c log p_c`` per pixel (nats, in ``[0, log C]``). It ranks pixels and
images like the ensemble's Jensen-Shannon score does, but mixes data ambiguity (object borders)
with model uncertainty, so its values are not comparable with the ``mlp-ensemble``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dtlabel.errors import ConfigError
from dtlabel.features import FeatureSpec
from dtlabel.heads.base import Head, entropy, register_head
from dtlabel.losses import ce_dice_loss

__all__ = ["Interpreter"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class _SepConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 conv, GroupNorm, SiLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            _norm(cout, groups),
            nn.SiLU(),
        )


@register_head("interpreter")
class Interpreter(Head):
    """Multi-scale conv head on teacher maps.

    Args:
        spec: the teacher's feature spec. num_classes: C.
        width: channels of every level (default 256, as in the paper).
        dropout: before the last 1x1 conv (default 0.1).
        dice_weight: weight of the Dice term in the loss (default 3.0).
        norm_groups: GroupNorm groups (default 32; ``gcd(width, 32)`` if width is not a multiple).
        max_resolution_stride: maps finer than this stride are average-pooled to it first, so the
            head's convolutions run at ``H / max_resolution_stride`` at most (1 = every map at its
            native size; set 2 or 4 to save time and memory at large image sizes on a CPU).
    """

    default_lr = 4e-3          # docs/METHOD.md §4: AdamW lr 4e-3, wd 0.05
    default_weight_decay = 0.05
    uncertainty_kind = "predictive entropy (nats)"

    def __init__(self, spec: FeatureSpec, num_classes: int, width: int = 256, dropout: float = 0.1,
                 dice_weight: float = 3.0, norm_groups: int = 32, max_resolution_stride: int = 1) -> None:
        if int(width) < 1 or not 0 <= float(dropout) < 1 or int(max_resolution_stride) < 1:
            raise ConfigError(f"interpreter: width must be >= 1, dropout in [0, 1) and max_resolution_stride >= 1 "
                              f"(got {width}, {dropout}, {max_resolution_stride})")
        if int(num_classes) < 2:
            raise ConfigError(f"a head needs at least 2 classes, got {num_classes}")
        super().__init__(spec, num_classes)
        width, groups = int(width), int(norm_groups)
        self.dice_weight = float(dice_weight)
        self.max_resolution_stride = int(max_resolution_stride)
        # coarse -> fine; a stable sort keeps the spec order among maps of equal stride
        self.order = sorted(range(len(spec)), key=lambda i: -spec.strides[i])
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in spec.channels)
        n_fuse = max(1, len(spec) - 1)
        self.fuse = nn.ModuleList(_SepConv(2 * width if len(spec) > 1 else width, width, groups) for _ in range(n_fuse))
        self.dropout = nn.Dropout2d(float(dropout)) if float(dropout) > 0 else nn.Identity()
        self.classifier = nn.Conv2d(width, int(num_classes), 1)

    def forward(self, features: Mapping[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` at ``size`` (default: the finest map's resolution)."""
        cap = self.max_resolution_stride
        maps = []
        for i in self.order:
            name, _, stride = self.spec.names[i], self.spec.channels[i], self.spec.strides[i]
            x = features[name].float()
            if stride < cap:  # pool maps finer than the cap down to it
                x = F.avg_pool2d(x, cap // stride) if cap % stride == 0 else F.adaptive_avg_pool2d(
                    x, (max(1, x.shape[-2] * stride // cap), max(1, x.shape[-1] * stride // cap)))
            maps.append(self.lateral[i](x))
        x = maps[0]
        if len(maps) == 1:
            x = self.fuse[0](x)
        for k, lat in enumerate(maps[1:]):
            x = self._merge(k, x, lat)
        logits = self.classifier(self.dropout(x))
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def _merge(self, k: int, x: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Upsample the coarser result ``x`` to ``lat``'s size, concatenate, depthwise-separable conv."""
        if x.shape[-2:] != lat.shape[-2:]:
            x = F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse[k](torch.cat([x, lat], dim=1))

    def loss(self, features: Mapping[str, torch.Tensor], masks: torch.Tensor, ignore_index: int = 255,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """CE + ``dice_weight`` x Dice on logits resized to the masks' ``(H, W)``."""
        logits = self(features, tuple(masks.shape[-2:]))
        return ce_dice_loss(logits, masks.to(logits.device), ignore_index, self.dice_weight)

    def _predict(self, features: Mapping[str, torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        # one image at a time: full-resolution activations of a whole batch would not fit a small machine
        b = next(iter(features.values())).shape[0]
        probs = torch.cat([self({k: v[i:i + 1] for k, v in features.items()}, size).float().softmax(1) for i in range(b)])
        return probs, entropy(probs, 1)
