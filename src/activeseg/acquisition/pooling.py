"""Scores of every unit on a volume's lattice at once, by pooling its voxel maps (no unit is materialised)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from activeseg.acquisition.units import UnitSpec


def pooled(map_D_H_W: Tensor, kernel: Sequence[int], stride: Sequence[int], total: bool = False) -> Tensor:
    """Mean (or, with ``total``, sum) of the map over every lattice box, flattened in row-major lattice order:
    score_U. Boxes clipped at the grid's end average over their own voxels (``ceil_mode``)."""
    divisor = 1 if total else None
    pooled_1_1_U = F.avg_pool3d(
        map_D_H_W[None, None].double(), tuple(kernel), tuple(stride), ceil_mode=True, divisor_override=divisor
    )
    return pooled_1_1_U.flatten()


def unit_scores(
    score_M_D_H_W: Tensor,
    mean_probs_C_D_H_W: Tensor,
    spec: UnitSpec,
    reduction: Literal["mean", "sum", "foreground"],
) -> Tensor:
    """Every lattice unit's M scores by pooling (mean, sum, or foreground-weighted mean): score_U_M (float64).

    ``foreground`` weights each voxel by its predicted foreground probability 1 - p̄_0 (Σ w·s / Σ w per unit).
    """
    kernel, stride = spec.window(score_M_D_H_W.shape[1:])
    columns = []
    for score_D_H_W in score_M_D_H_W:
        if reduction == "foreground":
            weight_D_H_W = 1.0 - mean_probs_C_D_H_W[0]
            numerator = pooled(score_D_H_W * weight_D_H_W, kernel, stride)
            columns.append(numerator / pooled(weight_D_H_W, kernel, stride).clamp_min(1e-12))
        else:
            columns.append(pooled(score_D_H_W, kernel, stride, total=reduction == "sum"))
    return torch.stack(columns, dim=1)
