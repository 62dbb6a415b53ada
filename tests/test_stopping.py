"""Stopping rules, checked on hand-made histories."""

from __future__ import annotations

from activeseg.engine.stopping import budget_reason, plateau_reason, uncertainty_reason


def test_budget_stops_after_the_last_round_or_an_empty_pool() -> None:
    assert budget_reason(2, rounds=3, candidates=10) is None
    assert budget_reason(3, rounds=3, candidates=10) == "budget reached: 3 acquisition rounds"
    assert budget_reason(1, rounds=3, candidates=0) == "pool exhausted: every pool case is labelled"


def test_plateau_compares_the_recent_best_with_the_earlier_best() -> None:
    assert plateau_reason([0.5, 0.6, 0.7], patience=None, min_delta=0.0) is None
    assert plateau_reason([0.5, 0.6], patience=2, min_delta=0.0) is None  # not enough rounds yet
    assert plateau_reason([0.5, 0.6, 0.62], patience=1, min_delta=0.01) is None  # +0.02 beats 0.01
    reason = plateau_reason([0.5, 0.6, 0.605], patience=1, min_delta=0.01)  # +0.005 does not
    assert reason is not None and reason.startswith("validation plateau") and "0.6050" in reason
    assert plateau_reason([0.5, 0.7, 0.65, 0.68], patience=2, min_delta=0.0) is not None  # worse than 0.7
    assert plateau_reason([0.5, 0.7, 0.65, 0.71], patience=2, min_delta=0.0) is None  # a new best


def test_low_uncertainty_uses_the_mean_unit_score() -> None:
    assert uncertainty_reason([0.1, 0.3], threshold=None) is None
    assert uncertainty_reason([0.1, 0.3], threshold=0.2) is None  # mean 0.2 is not below 0.2
    assert uncertainty_reason([0.1, 0.2], threshold=0.2) == "low uncertainty: mean pool score 0.15 < 0.2"
