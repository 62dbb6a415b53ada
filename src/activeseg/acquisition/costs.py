"""Annotation cost models: what labelling a unit costs, in volumes, slices, voxels or foreground-weighted voxels.

Every labelled unit records its cost under every model in ``COSTS``, so any learning curve can be drawn against
any cost; ``loop.round_budget`` caps a round in the config's ``unit.cost``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from activeseg.acquisition.units import Unit

CostModel = Callable[["CostContext"], float]
"""A unit's annotation cost in one unit of measure."""

FOREGROUND_WEIGHT = 3.0
"""A foreground voxel costs this many background voxels to draw (``foreground_voxels`` cost)."""


@dataclass(frozen=True)
class CostContext:
    """What a unit's cost may depend on: its case's planned grid, the slicing axis, the voxel volumes of the planned
    and native grids, and the label drawn on it (None before anyone has labelled it)."""

    unit: Unit
    shape: tuple[int, int, int]
    axis: int = 0
    label_D_H_W: npt.NDArray[np.uint8] | None = None
    voxel_mm3: float = 1.0
    native_voxel_mm3: float = 1.0

    @property
    def voxels(self) -> int:
        return self.unit.voxels(self.shape)


def _volumes(c: CostContext) -> float:
    return c.voxels / float(np.prod(c.shape))


def _slices(c: CostContext) -> float:
    region = c.unit.region(c.shape)[c.axis]
    return float(region.stop - region.start)


def _voxels(c: CostContext) -> float:
    return float(c.voxels)


def _mm3(c: CostContext) -> float:
    return c.voxels * c.voxel_mm3


def _native_voxels(c: CostContext) -> float:
    return _mm3(c) / c.native_voxel_mm3


def _labelled_foreground(c: CostContext) -> tuple[int, int]:
    """(voxels, foreground voxels) of the unit's label; 255 (unlabelled) is not foreground."""
    if c.label_D_H_W is None:
        raise ValueError(f"the foreground cost of {c.unit.key} needs its label")
    inside = c.label_D_H_W[c.unit.region(c.shape)]
    return int(inside.size), int(((inside > 0) & (inside < 255)).sum())


def _foreground_voxels(c: CostContext) -> float:
    voxels, foreground = _labelled_foreground(c)
    return float(voxels - foreground) + FOREGROUND_WEIGHT * foreground


def _foreground(c: CostContext) -> float:
    return float(_labelled_foreground(c)[1])


COSTS: dict[str, CostModel] = {
    "volumes": _volumes,
    "slices": _slices,
    "voxels": _voxels,
    "foreground_voxels": _foreground_voxels,
    "foreground": _foreground,
    "native_voxels": _native_voxels,
    "mm3": _mm3,
}
"""Every cost model; each labelled unit records all of them, so any curve can be drawn against any cost. Voxels
are the planned grid's; ``native_voxels`` are the image's own (the planned volume in the native voxel size).
``foreground`` counts only the labelled foreground voxels: nnActive's x-axis for foreground efficiency."""

LABEL_FREE_COSTS = ("volumes", "slices", "voxels", "native_voxels", "mm3")
"""Costs known before labelling (the foreground-weighted cost depends on the label drawn)."""


def unit_costs(context: CostContext) -> dict[str, float]:
    """The unit's cost under every registered cost model."""
    return {name: model(context) for name, model in COSTS.items()}


def information_per_cost(score_U_M: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Cost-aware score vectors, ``(*scores, expected cost)`` pooled alike (one unit per row, or one vector), as
    expected information per unit of annotation cost: each score over the cost, the cost dropped (score_U_M-1).
    Pooled by mean or sum, the ratio is the unit's total score over its total expected cost, so a unit whose
    confident foreground would be costly to draw loses to an equally uncertain unit that costs less."""
    score = np.asarray(score_U_M, dtype=np.float64)
    if score.ndim == 0 or score.shape[-1] < 2 or not np.all(score[..., -1] > 0):
        raise ValueError(f"a cost-aware score vector is (*scores, cost) with a positive cost, got {score.tolist()}")
    return np.asarray(score[..., :-1] / score[..., -1:])
