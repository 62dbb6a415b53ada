"""What an oracle is: it answers the loop's label queries (unit keys) and hands over the labels it gave.

The loop only ever obtains a pool label through an oracle, so a simulated oracle (ground truth revealed on request)
and a human one (labels that arrive later) plug into the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from activeseg.acquisition.selectors import Choice


class Oracle(Protocol):
    """Something that can label pool cases."""

    def request(self, round_index: int, choices: Sequence[Choice]) -> list[str]:
        """Ask for the labels of the chosen units; return the unit keys whose labels train round ``round_index``.

        An oracle that must wait for labels raises :class:`LabelsPending`; one that starts the round with part of
        the labels (a human's choice) returns that part.
        """
        ...

    def label(self, case_id: str) -> np.ndarray:
        """The label_D_H_W of a case whose label has been delivered."""
        ...


class OracleError(RuntimeError):
    """A label was asked of an oracle that has not delivered it."""


WAITING = "waiting for labels"


class LabelsPending(Exception):
    """The round cannot start yet: its labels have not all arrived. Nothing was committed; resume continues."""

    def __init__(self, round_index: int, received: int, requested: int) -> None:
        super().__init__(round_index, received, requested)
        self.round_index, self.received, self.requested = round_index, received, requested

    def __str__(self) -> str:
        return f"{WAITING}: round {self.round_index} has {self.received} of {self.requested}"
