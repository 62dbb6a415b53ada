"""The human oracle: labels that a person sends over time, by upload or by folder ingest.

Round 0's units are the seed set, labelled from the dataset's label files (a team starts from cases it has labelled
already). Every acquired label comes from the person through the run's :class:`~activeseg.rundir.label_store.
LabelStore`: the received native-grid file, brought to the planned grid through the case's geometry exactly as
the dataset's labels are, and kept only inside the units accepted in its round. A case labelled over several rounds
(different slices or patches) combines them, so a person who draws the ground truth gives the training exactly
what the simulated oracle gives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing

import numpy as np

from activeseg.acquisition.selectors import Choice
from activeseg.acquisition.units import IGNORE, case_of, labelled_mask, unit_from_key
from activeseg.data.io import read_volume
from activeseg.data.splits import RunData
from activeseg.oracles.base import LabelsPending, OracleError
from activeseg.rundir.label_store import LabelStore
from activeseg.rundir.layout import RunLayout


class HumanOracle:
    """Labels from a person, through the run's :class:`LabelStore` (see the module docstring).

    ``seed_units`` are round 0's unit keys, labelled from the dataset.
    """

    def __init__(self, store: LabelStore, data: RunData, policy: str, seed_units: Sequence[str]) -> None:
        self.store = store
        self.data = data
        self.policy = policy
        self._seed_units: dict[str, list[str]] = {}
        for unit in seed_units:
            self._seed_units.setdefault(case_of(unit), []).append(unit)

    def request(self, round_index: int, choices: Sequence[Choice]) -> list[str]:
        """The unit keys whose labels train round ``round_index``; raises :class:`LabelsPending` while it waits."""
        requested = [(c.unit, c.rank, c.score) for c in choices]
        accepted, queue = self.store.close_round(round_index, requested, self.policy)
        if not accepted:
            raise LabelsPending(round_index, len(queue.received), len(queue.items))
        return accepted

    def label(self, case_id: str) -> np.ndarray:
        """The training label_D_H_W of a labelled case (``IGNORE`` outside its units)."""
        pieces: list[tuple[list[str], np.ndarray]] = []
        if case_id in self._seed_units:
            pieces.append((self._seed_units[case_id], self.data.ground_truth(case_id)))
        geometry = self.data.geometry(case_id)
        pieces += [
            (units, geometry.label_to_planned(read_volume(path).array))  # as the dataset's labels are mapped
            for _, units, path in self.store.accepted_labels(case_id)
        ]
        if not pieces:
            raise OracleError(f"no accepted human label for {case_id!r}")
        shape = geometry.shape
        label_D_H_W = np.full(shape, IGNORE, dtype=np.uint8)
        for units, source in pieces:
            if case_id in units:  # the whole volume
                label_D_H_W = np.array(source, dtype=np.uint8)
                continue
            inside = labelled_mask([unit_from_key(k, shape) for k in units], shape)
            label_D_H_W[inside] = source[inside]
        return np.ascontiguousarray(label_D_H_W)


def waiting_message(layout: RunLayout) -> str | None:
    """A line saying which round waits for how many labels, or None if none is waiting."""
    if not layout.ledger.exists():
        return None
    with closing(sqlite3.connect(f"{layout.ledger.resolve().as_uri()}?mode=ro", uri=True)) as db:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_requests'"
        if db.execute(query).fetchone() is None:  # an older run that never asked a person: leave it untouched
            return None
        if db.execute("SELECT 1 FROM label_requests LIMIT 1").fetchone() is None:
            return None
    queue = layout.label_store().queue()
    if queue is None:
        return None
    return str(LabelsPending(queue.round, len(queue.received), len(queue.items)))
