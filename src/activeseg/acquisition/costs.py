"""Annotation cost models: what labelling a unit costs, in volumes, slices, voxels or foreground-weighted voxels.

Every labelled unit records its cost under every model in ``COSTS``, so any learning curve can be drawn against
any cost; ``loop.round_budget`` caps a round in the config's ``unit.cost``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from activeseg.acquisition.units import Unit

CostModel = Callable[[Unit, np.ndarray, int], float]
"""(unit, label_D_H_W of its case, slicing axis) -> the unit's annotation cost"""

FOREGROUND_WEIGHT = 3.0
"""A foreground voxel costs this many background voxels to draw (``foreground_voxels`` cost)."""


def _volumes(unit: Unit, label: np.ndarray, axis: int) -> float:
    return unit.voxels(label.shape) / label.size


def _slices(unit: Unit, label: np.ndarray, axis: int) -> float:
    region = unit.region(label.shape)[axis]
    return float(region.stop - region.start)


def _voxels(unit: Unit, label: np.ndarray, axis: int) -> float:
    return float(unit.voxels(label.shape))


def _foreground_voxels(unit: Unit, label: np.ndarray, axis: int) -> float:
    inside = label[unit.region(label.shape)]
    foreground = int((inside > 0).sum())
    return float(inside.size - foreground) + FOREGROUND_WEIGHT * foreground


COSTS: dict[str, CostModel] = {
    "volumes": _volumes,
    "slices": _slices,
    "voxels": _voxels,
    "foreground_voxels": _foreground_voxels,
}
"""Every cost model; each labelled unit records all of them, so any curve can be drawn against any cost."""

LABEL_FREE_COSTS = ("volumes", "slices", "voxels")
"""Costs known before labelling (the foreground-weighted cost depends on the label drawn)."""


def unit_costs(unit: Unit, label_D_H_W: np.ndarray, axis: int) -> dict[str, float]:
    """The unit's cost under every registered cost model."""
    return {name: model(unit, label_D_H_W, axis) for name, model in COSTS.items()}
