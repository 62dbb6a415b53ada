"""Oracles answer label queries.

The loop only ever obtains a pool label through an oracle, so a simulated oracle (ground truth revealed on request)
and a human one (labels that arrive later) plug into the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np


class Oracle(Protocol):
    """Something that can label pool cases."""

    def request(self, round_index: int, case_ids: Sequence[str]) -> list[str]:
        """Ask for the labels of ``case_ids``; return the ids whose labels are available now."""
        ...

    def label(self, case_id: str) -> np.ndarray:
        """The label_D_H_W of a case whose label has been delivered."""
        ...


class OracleError(RuntimeError):
    """A label was asked of an oracle that has not delivered it."""


class SimulatedOracle:
    """Reveals ground truth, but only for cases that were requested: nothing else can leak into training."""

    def __init__(self, ground_truth: Callable[[str], np.ndarray], revealed: Iterable[str] = ()) -> None:
        self._ground_truth = ground_truth
        self._revealed = set(revealed)

    def request(self, round_index: int, case_ids: Sequence[str]) -> list[str]:
        """Every requested label is available at once."""
        del round_index
        self._revealed.update(case_ids)
        return list(case_ids)

    def label(self, case_id: str) -> np.ndarray:
        """Ground truth of a requested case."""
        if case_id not in self._revealed:
            raise OracleError(f"label of {case_id!r} was never requested from the oracle")
        return self._ground_truth(case_id)

    def foreground_fraction(self, case_id: str) -> float:
        """The true foreground fraction of any pool case, for simulation-only baselines (never used in training)."""
        return float((self._ground_truth(case_id) > 0).mean())
