"""Learning curves: reading them back from a run, and the area under the budget curve (AUBC)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.config import load_config


@dataclass(frozen=True)
class Curve:
    """One run's learning curve."""

    label: str
    n_labelled: list[int]
    """Labelled units (volumes, slices or patches) at each evaluated round."""
    mean_dice: list[float]
    unit: str = "volume"
    costs: dict[str, list[float]] = field(default_factory=dict)
    """Cumulative annotation cost at each round under every recorded cost model (``units.COSTS``)."""

    def budget(self, cost: str | None = None) -> list[float]:
        """The x-axis: labelled units, or the cumulative cost under ``cost``."""
        if cost is None:
            return [float(n) for n in self.n_labelled]
        if cost not in self.costs:
            raise KeyError(f"curve {self.label!r} records no {cost!r} cost; recorded: {', '.join(self.costs)}")
        return self.costs[cost]


def read_curve(run_dir: Path) -> Curve:
    """Read ``curve.csv`` of a run, labelled by its strategy (and name when that adds anything)."""
    run_dir = Path(run_dir)
    path = run_dir / "curve.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no learning curve yet (has the run finished a round?)")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    config = load_config(run_dir / "config.yaml")
    label = config.strategy.name
    if config.name not in (config.strategy.name, "run"):
        label += f" ({config.name})"
    costs = {
        name.removeprefix("cost_"): [float(r[name]) for r in rows]
        for name in (rows[0] if rows else {})
        if name.startswith("cost_")
    }
    n_labelled, mean_dice = [int(r["n_labelled"]) for r in rows], [float(r["mean_dice"]) for r in rows]
    return Curve(label, n_labelled, mean_dice, config.unit.kind, costs)


def aubc(n_labelled: Sequence[float], dice: Sequence[float]) -> float:
    """Area under the budget curve, normalised to [0, 1] on the budget axis (trapezoid rule).

    Equals the mean Dice when the curve is flat; a single point has no area, so its Dice is returned.
    """
    if len(n_labelled) != len(dice) or not dice:
        raise ValueError("need equally long, non-empty budget and Dice sequences")
    if len(dice) == 1:
        return float(dice[0])
    span = float(n_labelled[-1] - n_labelled[0])
    if span <= 0:
        raise ValueError("budgets must increase")
    steps = zip(n_labelled[:-1], n_labelled[1:], dice[:-1], dice[1:], strict=True)
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in steps)
    return float(area / span)
