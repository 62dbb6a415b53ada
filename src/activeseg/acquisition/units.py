"""Annotation units: whole volumes, 2D slices and 3D patches, their stable keys and their candidate lattice.

Every unit is a box on a case's training grid: a volume is the whole grid, a slice is one index along an axis,
a patch is a block. A unit is a frozen, serialisable value with a stable string key stored in the ledger:
``case`` for a volume, ``case@slice:A:I`` or ``case@patch:d0-d1:h0-h1:w0-w1`` (no commas, so keys are safe in CSV
files). Keys are formatted by :attr:`Unit.key` and parsed by :func:`parse_key` only, so the ledger can rebuild
exactly which voxels of which case are labelled at any round.

Only the best ``keep`` non-overlapping candidates of each volume are kept while scoring (greedy non-maximum
suppression, :func:`best_disjoint`), so memory stays flat as the pool grows, and candidates never overlap labelled
voxels or each other. Scores are pooled over the lattice in ``pooling``; costs are in ``costs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

UnitKind = Literal["volume", "slice", "patch"]
Edge = Literal["clip", "shift"]
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""((d0, d1), (h0, h1), (w0, w1)): half-open voxel ranges on the training grid"""

IGNORE = 255
"""Label value of voxels nobody has labelled; the training loss masks them out."""
SEPARATOR = "@"


@dataclass(frozen=True, order=True)
class Unit:
    """One query unit: a case and a box on its training grid (``None`` for the whole volume)."""

    case_id: str
    kind: UnitKind = "volume"
    box: Box | None = None
    axis: int = 0
    """The slicing axis of a slice unit (its box has extent 1 there)."""

    def __post_init__(self) -> None:
        if SEPARATOR in self.case_id:
            raise ValueError(f"case id {self.case_id!r} contains {SEPARATOR!r}, which unit keys reserve")
        if (self.box is None) != (self.kind == "volume"):
            raise ValueError(f"a {self.kind} unit {'needs' if self.box is None else 'has no'} box")

    @property
    def key(self) -> str:
        """The stable ledger key."""
        if self.box is None:
            return self.case_id
        if self.kind == "slice":
            return f"{self.case_id}{SEPARATOR}slice:{self.axis}:{self.box[self.axis][0]}"
        return f"{self.case_id}{SEPARATOR}patch:" + ":".join(f"{a}-{b}" for a, b in self.box)

    def region(self, shape: Sequence[int]) -> tuple[slice, slice, slice]:
        """Index of the unit in a D×H×W array."""
        box = self.box or tuple((0, s) for s in shape)
        return (slice(*box[0]), slice(*box[1]), slice(*box[2]))

    def voxels(self, shape: Sequence[int]) -> int:
        """Number of voxels in the unit."""
        return int(np.prod([s.stop - s.start for s in self.region(shape)]))


@dataclass(frozen=True)
class KeyParts:
    """What a unit key says without the grid's shape: the case, the kind, a slice's axis and index, a patch's box."""

    case_id: str
    kind: UnitKind
    axis: int = 0
    index: int = 0
    box: Box | None = None


def parse_key(key: str) -> KeyParts:
    """Parse a unit key (the inverse of :attr:`Unit.key`); ValueError names a malformed key."""
    case_id, separator, spec = key.partition(SEPARATOR)
    if not separator:
        return KeyParts(key, "volume")
    kind, _, rest = spec.partition(":")
    try:
        if kind == "slice":
            axis, index = (int(v) for v in rest.split(":"))
            return KeyParts(case_id, "slice", axis=axis, index=index)
        if kind == "patch":
            (d0, d1), (h0, h1), (w0, w1) = ([int(v) for v in part.split("-")] for part in rest.split(":"))
            return KeyParts(case_id, "patch", box=((d0, d1), (h0, h1), (w0, w1)))
    except ValueError:
        pass
    raise ValueError(f"not a unit key: {key!r}")


def case_of(key: str) -> str:
    """The case id of a unit key."""
    return key.partition(SEPARATOR)[0]


def is_whole_volume(key: str) -> bool:
    """Whether a unit key names a whole volume (a volume's key is its case id)."""
    return SEPARATOR not in key


def unit_from_key(key: str, shape: Sequence[int]) -> Unit:
    """Parse a ledger key back into a unit (``shape`` is the training grid, for a slice's box)."""
    parts = parse_key(key)
    if parts.kind == "slice":
        return slice_unit(parts.case_id, parts.axis, parts.index, shape)
    return Unit(parts.case_id, parts.kind, parts.box)


def slice_unit(case_id: str, axis: int, index: int, shape: Sequence[int]) -> Unit:
    """Slice ``index`` along ``axis`` of a case."""
    box = [(0, int(s)) for s in shape]
    box[axis] = (index, index + 1)
    return Unit(case_id, "slice", tuple(box), axis)  # type: ignore[arg-type]


# --- the unit lattice -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSpec:
    """How a case is cut into candidate units."""

    kind: UnitKind = "volume"
    axis: int = 0
    patch_size: tuple[int, int, int] = (20, 28, 20)
    stride: tuple[int, int, int] | None = None
    """Patch placement lattice: ``None`` is the non-overlapping grid (stride = size); a smaller stride places
    patches freely on a finer lattice, and non-maximum suppression keeps the chosen ones disjoint."""
    edge: Edge = "clip"
    """Where patches do not divide an axis: ``clip`` cuts the last patch at the grid's end (a smaller unit);
    ``shift`` moves it back inside, so every patch is full-size and the last one overlaps its neighbour."""

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

    def starts(self, shape: Sequence[int]) -> list[list[int]]:
        """The first voxel of every lattice unit along each axis; a unit spans ``window(shape)[0]`` voxels from
        there, cut at the grid's end (``clip``) or moved back inside it (``shift``, patches only)."""
        kernel, stride = self.window(shape)
        out = []
        for n, k, st in zip((int(n) for n in shape), kernel, stride, strict=True):
            if self.edge == "shift" and self.kind == "patch":
                first = list(range(0, n - k + 1, st))
                out.append(first + ([n - k] if first[-1] + k < n else []))
            else:
                out.append([start for start in range(0, n, st) if start == 0 or start + k - st < n])
        return out

    def lattice(self, case_id: str, shape: Sequence[int]) -> list[Unit]:
        """Every lattice unit of a case, in the row-major order of the pooled score grid. The lattice covers the
        whole grid (see ``edge`` for where the patches do not divide it)."""
        if self.kind == "volume":
            return [Unit(case_id)]
        kernel, _ = self.window(shape)
        ranges = [
            [(start, min(start + k, int(n))) for start in first]
            for n, k, first in zip(shape, kernel, self.starts(shape), strict=True)
        ]
        units = []
        for d in ranges[0]:
            for h in ranges[1]:
                for w in ranges[2]:
                    units.append(Unit(case_id, self.kind, (d, h, w), self.axis if self.kind == "slice" else 0))
        return units


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
    shape_of: Callable[[str], Sequence[int]],
    labelled: Callable[[str], np.ndarray],
    seed_for: Callable[[str], int],
) -> list[Unit]:
    """Candidates for strategies without scores: per case, a seeded random order of its lattice units, thinned
    to units that overlap no labelled voxel and no other candidate (all of them on a non-overlapping grid)."""
    candidates = []
    for case_id in case_ids:
        lattice = spec.lattice(case_id, shape_of(case_id))
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
