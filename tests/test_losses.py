"""CE + Dice: perfect predictions, ignore_index, all-ignored batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dtlabel.losses import ce_dice_loss, dice_loss


def _perfect_logits(target: torch.Tensor, c: int) -> torch.Tensor:
    return F.one_hot(target.clamp(0, c - 1), c).permute(0, 3, 1, 2).float() * 50.0


def test_dice_is_zero_for_a_perfect_prediction_and_ignores_ignored_pixels() -> None:
    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = _perfect_logits(target, 3)
    logits[0, :, 1, 1] = torch.tensor([0.0, 0.0, 50.0])  # whatever is predicted on the ignored pixel
    assert float(dice_loss(logits, target, 255)) < 1e-6
    out = ce_dice_loss(logits, target, 255)
    assert set(out) == {"loss", "ce", "dice"} and float(out["loss"]) < 1e-4


def test_dice_weight_and_wrong_prediction() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 1] = 10.0  # predicts class 1 everywhere
    out = ce_dice_loss(logits, target, dice_weight=3.0)
    assert float(out["dice"]) > 0.9
    assert torch.allclose(out["loss"], out["ce"] + 3.0 * out["dice"])


def test_all_ignored_batch_gives_zero_with_a_graph() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = ce_dice_loss(logits, torch.full((2, 4, 4), 255), 255)
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()  # no NaN, no error
    assert torch.isfinite(logits.grad).all()
