"""DreamTeacher's feature-distillation losses (docs/METHOD.md §3): ``L_feat = L_MSE + w_AT * L_AT``.

- ``teacher_norm``: the non-learned LayerNorm applied to the teacher side only. It equalises the
  magnitudes of the teacher's levels (decoder blocks differ by orders of magnitude). Two choices:
  ``"chw"`` (default) normalises each sample's map over channels *and* positions jointly, which
  keeps where the map's energy is; ``"c"`` normalises each position over its channels, the
  literal reading of the paper, which makes ``sum_c y_c^2 = C`` at every position and so leaves
  attention transfer on the normalised map no signal (measured: 62-64 everywhere for C = 64,
  docs/METHOD.md §3). Both the MSE and the attention target use the same normalised map (the
  public pitfall of whitening one and not the other is avoided).
- ``L_MSE``: mean over levels of the mean squared error between the regressed map and the
  normalised teacher map, at the teacher map's resolution.
- ``L_AT`` (attention transfer, p = 2): per sample and level, ``q = mean_c(x_c^2)`` flattened and
  L2-normalised **per sample** (never over the batch, so the loss does not depend on the batch
  size); the loss is the L2 distance ``||q_s - q_t||`` averaged over samples and levels; maps of
  different sizes are compared at the smaller one (area pooling).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from dtlabel.errors import ConfigError

NORMS = ("chw", "c", "none")


def teacher_norm(x: torch.Tensor, mode: str = "chw", eps: float = 1e-5) -> torch.Tensor:
    """Non-learned LayerNorm of teacher maps ``x (B, C, h, w)``: over ``(C, h, w)`` per sample
    (``"chw"``), over ``C`` per position (``"c"``), or nothing (``"none"``)."""
    if mode == "chw":
        return F.layer_norm(x, x.shape[1:], eps=eps)
    if mode == "c":
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=eps).permute(0, 3, 1, 2)
    if mode == "none":
        return x
    raise ConfigError(f"pretrain.teacher_norm={mode}: expected one of {', '.join(NORMS)}")


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h * w)``: the channel mean of squared activations, L2-normalised per sample."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``||attention_map(s) - attention_map(t)||_2`` at the smaller map size
    (the energy maps ``mean_c(x^2)`` are area-pooled there, so signed detail does not cancel)."""
    es, et = student.float().pow(2).mean(1, keepdim=True), teacher.float().pow(2).mean(1, keepdim=True)
    hs, ht = es.shape[-2:], et.shape[-2:]
    if hs != ht:
        small = (min(hs[0], ht[0]), min(hs[1], ht[1]))
        es = F.adaptive_avg_pool2d(es, small) if hs != small else es
        et = F.adaptive_avg_pool2d(et, small) if ht != small else et
    qs, qt = F.normalize(es.flatten(1), dim=1), F.normalize(et.flatten(1), dim=1)
    return (qs - qt).norm(dim=1).mean()


def feature_distillation_loss(regressed: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                              norm: str = "chw", at_weight: float = 10.0, mse_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{"loss", "mse", "at"}`` of regressed maps against teacher maps of the same names.

    ``regressed[name]`` is ``(B, C, h', w')``, resized (bilinear) to the teacher map's ``(h, w)`` for the
    MSE when they differ; ``teacher[name]`` is the raw teacher map (normalised here).
    """
    if set(regressed) != set(teacher):
        raise ValueError(f"regressed maps {sorted(regressed)} do not match teacher maps {sorted(teacher)}")
    mse, at = [], []
    for name, t in teacher.items():
        r = regressed[name].float()
        target = teacher_norm(t.float(), norm)
        r_at = r
        if r.shape[-2:] != target.shape[-2:]:
            r = F.interpolate(r, size=target.shape[-2:], mode="bilinear", align_corners=False)
        mse.append(F.mse_loss(r, target))
        at.append(attention_loss(r_at, target))
    l_mse, l_at = torch.stack(mse).mean(), torch.stack(at).mean()
    return {"loss": mse_weight * l_mse + at_weight * l_at, "mse": l_mse, "at": l_at}
