"""Annotation units: whole volumes, 2D slices and 3D patches, their candidates, scores and annotation costs.

Every unit is a box on a case's preprocessed grid: a volume is the whole grid, a slice is one index along an axis,
a patch is a block. A unit is a frozen, serialisable value with a stable string key stored in the ledger
(``case`` for a volume, ``case@slice:A:I`` or ``case@patch:d0-d1:h0-h1:w0-w1``; no commas, so keys are
safe in CSV files), so the ledger can rebuild exactly
which voxels of which case are labelled at any round.

Unit scores come from the streamed per-volume voxel maps by pooling (``avg_pool3d`` over every box of the lattice
at once): no candidate is materialised as an array. Only the best ``keep`` non-overlapping candidates of each
volume are kept (greedy non-maximum suppression), so memory stays flat as the pool grows, and candidates never
overlap labelled voxels or each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Kind = Literal["volume", "slice", "patch"]
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""((d0, d1), (h0, h1), (w0, w1)): half-open voxel ranges on the preprocessed grid"""

IGNORE = 255
"""Label value of voxels nobody has labelled; the training loss masks them out."""


@dataclass(frozen=True, order=True)
class Unit:
    """One query unit: a case and a box on its preprocessed grid (``None`` for the whole volume)."""

    case_id: str
    kind: Kind = "volume"
    box: Box | None = None
    axis: int = 0
    """The slicing axis of a slice unit (its box has extent 1 there)."""

    def __post_init__(self) -> None:
        if "@" in self.case_id:
            raise ValueError(f"case id {self.case_id!r} contains '@', which unit keys reserve")
        if (self.box is None) != (self.kind == "volume"):
            raise ValueError(f"a {self.kind} unit {'needs' if self.box is None else 'has no'} box")

    @property
    def key(self) -> str:
        """The stable ledger key."""
        if self.box is None:
            return self.case_id
        if self.kind == "slice":
            return f"{self.case_id}@slice:{self.axis}:{self.box[self.axis][0]}"
        return f"{self.case_id}@patch:" + ":".join(f"{a}-{b}" for a, b in self.box)

    def region(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """Index of the unit in a D×H×W array."""
        box = self.box or tuple((0, s) for s in shape)
        return (slice(*box[0]), slice(*box[1]), slice(*box[2]))

    def voxels(self, shape: Sequence[int]) -> int:
        """Number of voxels in the unit."""
        return int(np.prod([s.stop - s.start for s in self.region(shape)]))


def case_of(key: str) -> str:
    """The case id of a unit key."""
    return key.split("@", 1)[0]


def is_whole_volume(key: str) -> bool:
    """Whether a unit key names a whole volume (a volume's key is its case id; slices and patches add ``@...``)."""
    return "@" not in key


def unit_from_key(key: str, shape: Sequence[int]) -> Unit:
    """Parse a ledger key back into a unit (``shape`` is the preprocessed grid, for the slice's box)."""
    if "@" not in key:
        return Unit(key)
    case_id, spec = key.split("@", 1)
    kind, _, rest = spec.partition(":")
    try:
        if kind == "slice":
            axis, index = (int(v) for v in rest.split(":"))
            return slice_unit(case_id, axis, index, shape)
        if kind == "patch":
            (d0, d1), (h0, h1), (w0, w1) = ([int(v) for v in part.split("-")] for part in rest.split(":"))
            return Unit(case_id, "patch", ((d0, d1), (h0, h1), (w0, w1)))
    except ValueError:
        pass
    raise ValueError(f"not a unit key: {key!r}")


def slice_unit(case_id: str, axis: int, index: int, shape: Sequence[int]) -> Unit:
    """Slice ``index`` along ``axis`` of a case."""
    box = [(0, int(s)) for s in shape]
    box[axis] = (index, index + 1)
    return Unit(case_id, "slice", tuple(box), axis)  # type: ignore[arg-type]


# --- the unit lattice -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSpec:
    """How a case is cut into candidate units."""

    kind: Kind = "volume"
    axis: int = 0
    patch_size: tuple[int, int, int] = (20, 28, 20)
    stride: tuple[int, int, int] | None = None
    """Patch placement lattice: ``None`` is the non-overlapping grid (stride = size); a smaller stride places
    patches freely on a finer lattice, and non-maximum suppression keeps the chosen ones disjoint."""

    def window(self, shape: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(kernel, stride) of the pooling that scores every lattice unit of a D×H×W grid at once."""
        if self.kind == "slice":
            kernel = [int(s) for s in shape]
            kernel[self.axis] = 1
            stride = kernel.copy()
            stride[self.axis] = 1
            return tuple(kernel), tuple(stride)  # type: ignore[return-value]
        if self.kind == "patch":
            size = tuple(min(p, int(s)) for p, s in zip(self.patch_size, shape, strict=True))
            return size, self.stride or size  # type: ignore[return-value]
        full = tuple(int(s) for s in shape)
        return full, full  # type: ignore[return-value]

    def lattice(self, case_id: str, shape: Sequence[int]) -> list[Unit]:
        """Every lattice unit of a case, in the row-major order of the pooled score grid."""
        if self.kind == "volume":
            return [Unit(case_id)]
        kernel, stride = self.window(shape)
        starts = [range(0, int(s) - k + 1, st) for s, k, st in zip(shape, kernel, stride, strict=True)]
        units = []
        for d in starts[0]:
            for h in starts[1]:
                for w in starts[2]:
                    box = ((d, d + kernel[0]), (h, h + kernel[1]), (w, w + kernel[2]))
                    units.append(Unit(case_id, self.kind, box, self.axis if self.kind == "slice" else 0))
        return units


def pooled(map_D_H_W: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Mean of the map over every lattice box, flattened in row-major lattice order: score_U."""
    return F.avg_pool3d(map_D_H_W[None, None].double(), tuple(kernel), tuple(stride)).flatten()


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
            mean_U = pooled(score_D_H_W, kernel, stride)
            columns.append(mean_U * float(np.prod(kernel)) if reduction == "sum" else mean_U)
    return torch.stack(columns, dim=1)


def overlaps(unit: Unit, labelled_D_H_W: np.ndarray) -> bool:
    """Whether the unit touches any labelled voxel."""
    return bool(labelled_D_H_W[unit.region(labelled_D_H_W.shape)].any())


def disjoint(a: Unit, b: Unit, shape: Sequence[int]) -> bool:
    """Whether two units of the same case share no voxel."""
    return any(x.stop <= y.start or y.stop <= x.start for x, y in zip(a.region(shape), b.region(shape), strict=True))


def best_disjoint(
    units: Sequence[Unit],
    priority_U: np.ndarray,
    labelled_D_H_W: np.ndarray,
    keep: int | None,
) -> list[int]:
    """Greedy non-maximum suppression: indices of up to ``keep`` units, highest priority first (ties by lattice
    order), that overlap no labelled voxel and no unit kept before them."""
    shape = labelled_D_H_W.shape
    kept: list[int] = []
    for i in np.argsort(-priority_U, kind="stable"):
        unit = units[int(i)]
        if overlaps(unit, labelled_D_H_W) or not all(disjoint(unit, units[j], shape) for j in kept):
            continue
        kept.append(int(i))
        if keep is not None and len(kept) == keep:
            break
    return kept


def random_candidates(
    spec: UnitSpec,
    case_ids: Sequence[str],
    shape: Sequence[int],
    labelled: Callable[[str], np.ndarray],
    seed_for: Callable[[str], int],
) -> list[Unit]:
    """Candidates for strategies without scores: per case, a seeded random order of its lattice units, thinned
    to units that overlap no labelled voxel and no other candidate (all of them on a non-overlapping grid)."""
    candidates = []
    for case_id in case_ids:
        lattice = spec.lattice(case_id, shape)
        priority_U = np.random.default_rng(seed_for(case_id)).random(len(lattice))
        candidates += [lattice[i] for i in best_disjoint(lattice, priority_U, labelled(case_id), keep=None)]
    return candidates


def labelled_mask(units: Iterable[Unit], shape: Sequence[int]) -> np.ndarray:
    """Boolean D×H×W mask of the voxels covered by ``units`` (all of one case)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    for unit in units:
        mask[unit.region(shape)] = True
    return mask


def partial_label(label_D_H_W: np.ndarray, units: Iterable[Unit]) -> np.ndarray:
    """The label with every voxel outside ``units`` set to :data:`IGNORE`: exactly what was revealed."""
    mask = labelled_mask(units, label_D_H_W.shape)
    return np.where(mask, label_D_H_W, IGNORE).astype(np.uint8)


# --- annotation cost ------------------------------------------------------------------------------------------

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
