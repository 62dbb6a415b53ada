"""Scores of every unit on a volume's lattice at once, by pooling its voxel maps (no unit is materialised)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
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


def box_totals(map_D_H_W: Tensor, starts: Sequence[Sequence[int]], kernel: Sequence[int]) -> Tensor:
    """Sum of the map over every box with a corner in starts[0] × starts[1] × starts[2] and ``kernel`` voxels on
    each axis, flattened in row-major order (float64): one prefix sum per axis, so boxes may overlap."""
    total = map_D_H_W.double()
    for axis, (first, k) in enumerate(zip(starts, kernel, strict=True)):
        zero = torch.zeros_like(total.narrow(axis, 0, 1))
        prefix = torch.cat([zero, total.cumsum(axis)], dim=axis)  # prefix[i] = sum of the first i slices
        index = torch.tensor(list(first), dtype=torch.long, device=total.device)
        total = prefix.index_select(axis, index + k) - prefix.index_select(axis, index)
    return total.flatten()


def lattice_pooled(map_D_H_W: Tensor, spec: UnitSpec, total: bool = False) -> Tensor:
    """Mean (or, with ``total``, sum) of the map over every unit of ``spec``'s lattice, in lattice order."""
    kernel, stride = spec.window(map_D_H_W.shape)
    if spec.edge == "clip" or spec.kind != "patch":
        return pooled(map_D_H_W, kernel, stride, total)
    sums = box_totals(map_D_H_W, spec.starts(map_D_H_W.shape), kernel)  # every box full-size
    return sums if total else sums / float(np.prod(kernel))


def unit_scores(
    score_M_D_H_W: Tensor,
    mean_probs_C_D_H_W: Tensor,
    spec: UnitSpec,
    reduction: Literal["mean", "sum", "foreground"],
) -> Tensor:
    """Every lattice unit's M scores by pooling (mean, sum, or foreground-weighted mean): score_U_M (float64).

    ``foreground`` weights each voxel by its predicted foreground probability 1 - p̄_0 (Σ w·s / Σ w per unit).
    """
    columns = []
    for score_D_H_W in score_M_D_H_W:
        if reduction == "foreground":
            weight_D_H_W = 1.0 - mean_probs_C_D_H_W[0]
            numerator = lattice_pooled(score_D_H_W * weight_D_H_W, spec)
            columns.append(numerator / lattice_pooled(weight_D_H_W, spec).clamp_min(1e-12))
        else:
            columns.append(lattice_pooled(score_D_H_W, spec, total=reduction == "sum"))
    return torch.stack(columns, dim=1)
