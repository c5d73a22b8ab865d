"""Training losses of the few-label heads: cross-entropy + Dice (docs/METHOD.md §4), ignore_index aware.

Each objective returns a dict of named scalar losses; ``"loss"`` is the one to back-propagate, the
others are its parts for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ce_dice_loss", "dice_loss", "kd_loss", "weighted_ce_loss"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean_c dice_c``.

    Args:
        logits: ``(B, C, H, W)`` raw scores. target: ``(B, H, W)`` class ids; pixels equal to
            ``ignore_index`` (or outside ``[0, C)``) count neither as prediction nor as target.
        eps: additive smoothing of numerator and denominator.

    Dice is computed per class over the whole batch and averaged over the classes present in the
    target of the batch (absent classes are left to the cross-entropy term; counting them would
    reward predicting nothing of a rare class). Returns a scalar; 0 if no pixel is valid.
    """
    c = logits.shape[1]
    valid = (target >= 0) & (target < c) & (target != ignore_index)
    if not bool(valid.any()):
        return logits.sum() * 0.0  # keeps the graph, no NaN
    probs = logits.float().softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0).long(), c).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    present = onehot.sum(dims) > 0
    return 1.0 - dice[present].mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                 dice_weight: float = 3.0) -> dict[str, torch.Tensor]:
    """``CE + dice_weight * Dice`` (DreamTeacher's interpreter loss, weight 3.0).

    ``logits (B, C, H, W)``, ``target (B, H, W)`` at the same resolution. Returns
    ``{"loss", "ce", "dice"}`` scalars; all zero (with a graph) if every pixel is ignored.
    """
    c = logits.shape[1]
    target = target.long()
    # ids outside [0, C) other than ignore_index would crash cross_entropy: treat them as ignored
    target = torch.where((target >= 0) & (target < c), target, torch.full_like(target, ignore_index))
    if not bool((target != ignore_index).any()):
        zero = logits.sum() * 0.0
        return {"loss": zero, "ce": zero.detach(), "dice": zero.detach()}
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    dice = dice_loss(logits, target, ignore_index)
    return {"loss": ce + dice_weight * dice, "ce": ce.detach(), "dice": dice.detach()}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 4.0,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-label distillation ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, mean over pixels.

    The comparison is at the teacher logits' resolution ``(h, w)``: ``student_logits (B, C, H, W)``
    are downsampled there by area averaging (``F.interpolate(mode="area")``). ``valid (B, h, w)``
    bool masks out pixels (e.g. padded by augmentation). Returns a scalar (0 with a graph if no
    pixel is valid).
    """
    t = teacher_logits.float()
    s = student_logits.float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="area")
    p_t = (t / tau).softmax(1)
    kl = (p_t * ((t / tau).log_softmax(1) - (s / tau).log_softmax(1))).sum(1)  # (B, h, w)
    if valid is None:
        return kl.mean() * tau * tau
    w = valid.float()
    if not bool(valid.any()):
        return s.sum() * 0.0
    return (kl * w).sum() / w.sum() * tau * tau


def weighted_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy weighted by ``weight (B, H, W)`` (e.g. confidence ``1 - uncertainty``),
    normalised by the summed weight of counted pixels; ``ignore_index`` pixels count nowhere."""
    c = logits.shape[1]
    target = target.long()
    valid = (target >= 0) & (target < c) & (target != ignore_index)
    target = torch.where(valid, target, torch.full_like(target, ignore_index))
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    w = weight.float().clamp(min=0) * valid
    if float(w.sum()) <= 0:
        return logits.sum() * 0.0
    return (ce * w).sum() / w.sum()
