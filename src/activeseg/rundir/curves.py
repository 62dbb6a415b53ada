"""Learning curves: ``curve.csv`` written after every round from the ledger, and read back for plots and reports."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.acquisition.costs import COSTS
from activeseg.artifacts import write_text_atomic
from activeseg.config import load_config
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger


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


def write_curve(layout: RunLayout, ledger: Ledger) -> None:
    """``curve.csv``: one row per evaluated round, with the cumulative cost of its labels under every cost model."""
    rounds = ledger.rounds()
    labels = ledger.labels()
    classes = sorted(k for k in rounds[0].dice if k.startswith("class_")) if rounds else []
    lines = [",".join(["round", "n_labelled", "mean_dice", *classes, *(f"cost_{c}" for c in COSTS)])]
    for record in rounds:
        spent = [sum(x.cost.get(c, float("nan")) for x in labels if x.round <= record.round) for c in COSTS]
        values = [record.round, record.n_labelled, record.mean_dice, *(record.dice[k] for k in classes), *spent]
        lines.append(",".join(map(str, values)))
    write_text_atomic(layout.curve_csv, "\n".join(lines) + "\n")


def read_curve(run_dir: Path) -> Curve:
    """Read ``curve.csv`` of a run, labelled by its strategy (and name when that adds anything)."""
    layout = RunLayout(run_dir)
    path = layout.curve_csv
    if not path.exists():
        raise FileNotFoundError(f"{path}: no learning curve yet (has the run finished a round?)")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    config = load_config(layout.config)
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
