"""``mlp-ensemble``: the pixel-MLP ensemble of DDPM-seg / DatasetGAN (docs/METHOD.md §4), in bounded memory.

``members`` (default 10) independent MLPs classify each pixel from its feature vector: every teacher
map bilinearly upsampled to the label size and concatenated (``D = sum of channels``). Layers
``D -> 128 -> 32 -> C`` with ReLU + BatchNorm (``D -> 256 -> 128 -> C`` when C >= 30), as the peers.

Memory. The peers upsample every map of every labeled image to full resolution and keep all
``N x H x W x D`` floats in RAM (~210 GB for 50 images at 256 px), then train on shuffled pixels.
Here a training step takes the native-resolution maps of one batch of images (computed online, or
read from the feature cache), draws ``pixels_per_image`` random labeled pixels per image and reads
their feature vectors directly with bilinear ``grid_sample`` (:func:`~dtlabel.heads.base.sample_features`),
the same values full upsampling would give at those pixels. The resident set is
``batch x pixels_per_image x D`` floats; prediction runs in chunks of pixels. Nothing grows with N.

Vote. ``vote="mean"`` (default): ``probs`` is the mean of the members' softmax outputs and the
label is its argmax (smooth soft labels for distillation). ``vote="majority"``: ``probs`` is the
fraction of members voting for each class (multiples of 1/K), so the argmax is the peers' majority
vote (ties go to the lower class id).

Uncertainty: the Jensen-Shannon divergence of the members, ``H(mean_k p_k) - mean_k H(p_k)`` per
pixel (nats, 0 when all members agree, at most ``min(log K, log C)``); per image the score is the
mean of the top 10% pixel values (:func:`~dtlabel.heads.base.image_score`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dtlabel.errors import ConfigError
from dtlabel.features import FeatureSpec
from dtlabel.heads.base import Head, entropy, pixel_grid, register_head, sample_features

__all__ = ["MLPEnsemble", "js_divergence", "sample_pixels"]

_VOTES = ("mean", "majority")
_CHUNK_BYTES = 64 * 2**20  # bytes of per-pixel tensors held at once while predicting


def js_divergence(member_probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Jensen-Shannon divergence of an ensemble: ``H(mean p) - mean H(p_k)``.

    ``member_probs``: ``(K, ..., C)`` with members along ``dim`` and classes last; returns ``(...)``
    in nats, >= 0 (clamped against rounding).
    """
    mean = member_probs.mean(dim)
    return (entropy(mean, -1) - entropy(member_probs, -1).mean(dim)).clamp_min(0.0)


def sample_pixels(masks: torch.Tensor, n: int, ignore_index: int, num_classes: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labeled pixels per image of ``masks (B, H, W)`` (without replacement when possible).

    Returns ``coords (B, n, 2)`` normalised pixel centres for :func:`sample_features` and
    ``targets (B, n)`` class ids; images without a labeled pixel get targets ``ignore_index``.
    """
    b, h, w = masks.shape
    flat = masks.reshape(b, -1).cpu()
    coords = torch.zeros(b, n, 2)
    targets = torch.full((b, n), int(ignore_index), dtype=torch.long)
    for i in range(b):
        valid = torch.nonzero((flat[i] != ignore_index) & (flat[i] >= 0) & (flat[i] < num_classes)).squeeze(1)
        if valid.numel() == 0:
            continue
        if valid.numel() >= n:
            pick = valid[torch.randperm(valid.numel(), generator=generator)[:n]]
        else:
            pick = valid[torch.randint(valid.numel(), (n,), generator=generator)]
        r, c = pick // w, pick % w
        coords[i, :, 0] = (c.float() + 0.5) / w * 2 - 1
        coords[i, :, 1] = (r.float() + 0.5) / h * 2 - 1
        targets[i] = flat[i, pick].long()
    return coords, targets


def _mlp(dim: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(dim, h), nn.ReLU(), nn.BatchNorm1d(h)]
        dim = h
    layers.append(nn.Linear(dim, num_classes))
    return nn.Sequential(*layers)


@register_head("mlp-ensemble")
class MLPEnsemble(Head):
    """An ensemble of pixel MLPs on upsampled, concatenated teacher features.

    Args:
        spec: the teacher's feature spec. num_classes: C.
        members: number of MLPs K (default 10).
        hidden: hidden widths; default ``[128, 32]``, or ``[256, 128]`` when C >= 30.
        vote: ``"mean"`` (mean probabilities, default) or ``"majority"`` (vote fractions).
        pixels_per_image: labeled pixels drawn per image and training step (default 2048).
    """

    default_lr = 1e-3          # docs/METHOD.md §4: Adam lr 1e-3
    default_weight_decay = 0.0
    batch_statistics = True    # BatchNorm over the batch's pixels
    uncertainty_kind = "Jensen-Shannon divergence of the members (nats)"

    def __init__(self, spec: FeatureSpec, num_classes: int, members: int = 10, hidden: Sequence[int] | None = None,
                 vote: str = "mean", pixels_per_image: int = 2048) -> None:
        if int(members) < 1 or int(pixels_per_image) < 1:
            raise ConfigError(f"mlp-ensemble: members and pixels_per_image must be >= 1 (got {members}, {pixels_per_image})")
        if vote not in _VOTES:
            raise ConfigError(f"mlp-ensemble: unknown vote {vote!r}; choose one of {list(_VOTES)}")
        if int(num_classes) < 2:
            raise ConfigError(f"a head needs at least 2 classes, got {num_classes}")
        hidden = [int(h) for h in hidden] if hidden else ([256, 128] if int(num_classes) >= 30 else [128, 32])
        super().__init__(spec, num_classes)
        self.record(hidden=hidden)  # the class-count rule's choice, so a reload does not depend on it
        self.hidden, self.vote, self.pixels_per_image = hidden, vote, int(pixels_per_image)
        self.members = nn.ModuleList(_mlp(spec.total_channels, hidden, int(num_classes)) for _ in range(int(members)))

    def member_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels (P, D)`` feature vectors -> ``(K, P, C)`` logits of every member."""
        return torch.stack([m(pixels) for m in self.members])

    def loss(self, features: Mapping[str, torch.Tensor], masks: torch.Tensor, ignore_index: int = 255,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Mean over members of the cross-entropy on ``pixels_per_image`` random labeled pixels per image
        (the same pixels for every member; members differ by their initialisation, as in DDPM-seg)."""
        coords, targets = sample_pixels(masks, self.pixels_per_image, ignore_index, self.num_classes,
                                        generator)
        keep = targets.reshape(-1) != ignore_index
        if not bool(keep.any()):
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss": zero, "ce": zero.detach()}
        dev = self.device
        pixels = sample_features(features, self.spec.names, coords.to(dev)).reshape(-1, self.spec.total_channels)[keep.to(dev)]
        y = targets.reshape(-1)[keep].to(dev)
        logits = self.member_logits(pixels)
        ce = F.cross_entropy(logits.reshape(-1, self.num_classes), y.repeat(len(self.members)))
        return {"loss": ce, "ce": ce.detach()}

    def _predict(self, features: Mapping[str, torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = next(iter(features.values())).shape[0]
        h, w = size
        d, c, dev = self.spec.total_channels, self.num_classes, self.device
        k, hidden = len(self.members), sum(self.hidden)
        per_pixel = 4 * (d + k * (2 * hidden + 3 * c) + 2 * c)  # features, member activations, outputs
        rows = max(1, _CHUNK_BYTES // (per_pixel * w * b))
        probs = torch.empty(b, c, h, w, device=dev)
        unc = torch.empty(b, h, w, device=dev)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            coords = pixel_grid(size, slice(r0, r1), dev).unsqueeze(0).expand(b, -1, -1)
            pix = sample_features(features, self.spec.names, coords).reshape(-1, d)
            p = self.member_logits(pix).float().softmax(-1)           # (K, B*n, C)
            js = js_divergence(p, 0)                                 # (B*n,)
            if self.vote == "majority":
                votes = F.one_hot(p.argmax(-1), c).float().mean(0)
            else:
                votes = p.mean(0)
            probs[:, :, r0:r1] = votes.reshape(b, r1 - r0, w, c).permute(0, 3, 1, 2)
            unc[:, r0:r1] = js.reshape(b, r1 - r0, w)
        return probs, unc
