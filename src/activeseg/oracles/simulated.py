"""The simulated oracle of benchmarks: ground truth revealed on request, and only what was requested."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy.ndimage import binary_erosion

from activeseg.acquisition.selectors import Choice
from activeseg.acquisition.units import case_of, partial_label, unit_from_key
from activeseg.oracles.base import OracleError


class SimulatedOracle:
    """Reveals ground truth, but only the requested units: nothing else can leak into training.

    Requests and reveals are by unit key (a case id for a whole volume; see ``units``). The label of a partly
    revealed case is :data:`~activeseg.acquisition.units.IGNORE` everywhere outside its revealed units.
    """

    def __init__(self, ground_truth: Callable[[str], np.ndarray], revealed: Iterable[str] = ()) -> None:
        self._ground_truth = ground_truth
        self._revealed: dict[str, set[str]] = {}
        self._reveal(revealed)

    def _reveal(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._revealed.setdefault(case_of(key), set()).add(key)

    def request(self, round_index: int, choices: Sequence[Choice]) -> list[str]:
        """Every requested unit's label is available at once."""
        del round_index
        units = [c.unit for c in choices]
        self._reveal(units)
        return units

    def label(self, case_id: str) -> np.ndarray:
        """Ground truth of a case, restricted to its requested units (IGNORE elsewhere)."""
        keys = self._revealed.get(case_id)
        if not keys:
            raise OracleError(f"label of {case_id!r} was never requested from the oracle")
        truth = self._ground_truth(case_id)
        if case_id in keys:  # the whole volume
            return truth
        return partial_label(truth, [unit_from_key(k, truth.shape) for k in sorted(keys)])

    def true_fractions(self, keys: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
        """Each pool unit's true foreground fraction and true border fraction (foreground voxels with a background
        6-neighbour), for simulation-only baselines (never used in training). Each case is read once."""
        by_case: dict[str, list[str]] = {}
        for key in keys:
            by_case.setdefault(case_of(key), []).append(key)
        foreground_of: dict[str, float] = {}
        border_of: dict[str, float] = {}
        for case_id, case_keys in by_case.items():
            truth = self._ground_truth(case_id)
            foreground = truth > 0
            border = foreground & ~binary_erosion(foreground, border_value=0)
            for key in case_keys:
                region = unit_from_key(key, truth.shape).region(truth.shape)
                foreground_of[key] = float(foreground[region].mean())
                border_of[key] = float(border[region].mean())
        return foreground_of, border_of

    def truth(self, case_id: str) -> np.ndarray:
        """A case's whole ground truth, for costs known in advance (simulation only: a person's label-dependent
        cost is known only afterwards). Reveals nothing to training."""
        return self._ground_truth(case_id)
