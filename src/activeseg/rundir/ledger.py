"""The label ledger: which unit of which case was labelled in which round, and why; rounds and the stop reason.

Keyed by stable case ids (never by list positions). Every write is one transaction, so a process killed at any
moment leaves the ledger either before or after a change, never half-way. The ledger is the source of truth for
resuming: the labelled set of round r is every case whose ``round`` is at most r.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.acquisition.units import case_of
from activeseg.rundir.database import connect, create_or_migrate, now, transaction


class LedgerError(RuntimeError):
    """An impossible ledger change (such as labelling a case twice)."""


@dataclass(frozen=True)
class LabelRecord:
    """One labelled unit: a whole case (``unit == case_id``), or a slice or patch of it (see ``units``)."""

    unit: str
    case_id: str
    round: int
    strategy: str
    score: float | None
    rank: int
    cost: dict[str, float]
    """The unit's annotation cost under every cost model (``units.COSTS``)."""
    labelled_at: str


@dataclass(frozen=True)
class RoundRecord:
    """One evaluated round."""

    round: int
    n_labelled: int
    seeds: dict[str, int]
    mean_dice: float
    dice: dict[str, float]
    evaluated_at: str


class Ledger:
    """A run's SQLite ledger."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path)
        create_or_migrate(self._db)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One all-or-nothing write (see :func:`activeseg.rundir.database.transaction`)."""
        return transaction(self._db)

    # --- set-up -------------------------------------------------------------------------------------------------

    def initialise(
        self, pool: Sequence[str], test: Sequence[str], meta: dict[str, Any], validation: Sequence[str] = ()
    ) -> None:
        """Record the split and run metadata, once. Refuses to overwrite a ledger that already holds a split."""
        with self.transaction() as db:
            if db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]:
                raise LedgerError(f"{self.path}: ledger already initialised")
            db.executemany("INSERT INTO cases VALUES (?, 'pool')", [(c,) for c in pool])
            db.executemany("INSERT INTO cases VALUES (?, 'test')", [(c,) for c in test])
            db.executemany("INSERT INTO cases VALUES (?, 'validation')", [(c,) for c in validation])
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, sort_keys=True)) for k, v in meta.items()]
            )

    def meta(self) -> dict[str, Any]:
        """Run metadata stored at initialisation."""
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta ORDER BY key")}

    def split(self, name: str) -> list[str]:
        """Case ids of ``pool``, ``test`` or ``validation``, sorted."""
        rows = self._db.execute("SELECT case_id FROM cases WHERE split = ? ORDER BY case_id", (name,))
        return [r[0] for r in rows]

    # --- labels -------------------------------------------------------------------------------------------------

    def add_labels(
        self,
        round_index: int,
        strategy: str,
        choices: Sequence[tuple[str, float | None, int]],
        costs: Sequence[dict[str, float]] | None = None,
    ) -> None:
        """Record (unit key, score, rank) choices, with each unit's costs, as labelled in ``round_index``: all of
        them or none. A unit key is a case id for a whole volume (see ``units.Unit.key``)."""
        when = now()
        costs = costs if costs is not None else [{} for _ in choices]
        if len(costs) != len(choices):
            raise LedgerError(f"{len(choices)} units but {len(costs)} costs")
        with self.transaction() as db:
            rows = []
            for (unit, score, rank), cost in zip(choices, costs, strict=True):
                case_id = case_of(unit)
                row = db.execute("SELECT split FROM cases WHERE case_id = ?", (case_id,)).fetchone()
                if row is None or row[0] != "pool":
                    raise LedgerError(f"{case_id!r} is not a pool case of this run")
                if db.execute("SELECT 1 FROM labels WHERE unit = ?", (unit,)).fetchone():
                    raise LedgerError(f"{unit!r} is already labelled")
                whole = db.execute("SELECT 1 FROM labels WHERE unit = ?", (case_id,)).fetchone()
                if whole or (
                    unit == case_id and db.execute("SELECT 1 FROM labels WHERE case_id = ?", (case_id,)).fetchone()
                ):
                    raise LedgerError(f"{unit!r} overlaps labels of {case_id!r} already recorded")
                rows.append((unit, case_id, round_index, strategy, score, rank, json.dumps(cost, sort_keys=True), when))
            db.executemany("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def labels(self, up_to_round: int | None = None) -> list[LabelRecord]:
        """Labelled units (optionally only those labelled by ``up_to_round``), in round then rank order."""
        query = "SELECT * FROM labels"
        args: tuple[int, ...] = ()
        if up_to_round is not None:
            query += " WHERE round <= ?"
            args = (up_to_round,)
        rows = self._db.execute(query + " ORDER BY round, rank", args)
        return [
            LabelRecord(unit, case_id, round_, strategy, score, rank, json.loads(cost), when)
            for unit, case_id, round_, strategy, score, rank, cost, when in rows
        ]

    def labelled_ids(self, up_to_round: int | None = None) -> list[str]:
        """Ids of the cases with any labelled voxel, sorted."""
        return sorted({r.case_id for r in self.labels(up_to_round)})

    def labelled_units(self, up_to_round: int | None = None) -> list[str]:
        """Keys of the labelled units, sorted."""
        return sorted(r.unit for r in self.labels(up_to_round))

    def unlabelled_ids(self) -> list[str]:
        """Pool cases without any labelled voxel, sorted."""
        labelled = set(self.labelled_ids())
        return [c for c in self.split("pool") if c not in labelled]

    def current_round(self) -> int:
        """The round whose labelled set is complete: the highest round any label was recorded in (-1 if none)."""
        value = self._db.execute("SELECT MAX(round) FROM labels").fetchone()[0]
        return -1 if value is None else int(value)

    # --- rounds -------------------------------------------------------------------------------------------------

    def record_round(self, round_index: int, n_labelled: int, seeds: dict[str, int], dice: dict[str, float]) -> None:
        """Store a round's evaluation (replacing an earlier attempt of the same round)."""
        mean = dice["mean_foreground"]
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?)",
                (round_index, n_labelled, json.dumps(seeds), mean, json.dumps(dice), now()),
            )

    def rounds(self) -> list[RoundRecord]:
        """All evaluated rounds, in order."""
        rows = self._db.execute("SELECT * FROM rounds ORDER BY round")
        return [RoundRecord(r[0], r[1], json.loads(r[2]), r[3], json.loads(r[4]), r[5]) for r in rows]

    def stop(self, round_index: int, reason: str) -> None:
        """Record why the run stopped after ``round_index``."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO stops VALUES (?, ?, ?)", (round_index, reason, now()))

    def stop_reason(self) -> str | None:
        """Why the run stopped, or None while it is unfinished."""
        row = self._db.execute("SELECT reason FROM stops ORDER BY round DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])
