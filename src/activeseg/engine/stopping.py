"""Stopping criteria: pure rules that say why a run stops after a round, or None to go on.

:func:`stop_reason` asks every rule in order (budget, validation plateau, then, once the pool is scored, low
uncertainty); the loop records the first reason in the ledger's ``stops`` table. Baal offers the same three kinds
(labelling budget, early stopping, low average uncertainty).
"""

from __future__ import annotations

from collections.abc import Sequence

from activeseg.config import LoopConfig


def stop_reason(
    round_index: int,
    loop: LoopConfig,
    candidates: int,
    validation_dice: Sequence[float],
    unit_scores: Sequence[float] | None = None,
) -> str | None:
    """Why the run stops after ``round_index``, or None. ``candidates`` counts what could still be queried;
    ``unit_scores`` are the unlabelled pool's scores once it is scored (None before, or for score-free strategies).
    """
    return (
        budget_reason(round_index, loop.rounds, candidates)
        or plateau_reason(validation_dice, loop.plateau_patience, loop.plateau_min_delta)
        or (uncertainty_reason(unit_scores, loop.stop_below_uncertainty) if unit_scores is not None else None)
    )


def budget_reason(round_index: int, rounds: int, candidates: int) -> str | None:
    """Stop once ``rounds`` acquisition rounds are done or no unlabelled candidate is left."""
    if round_index >= rounds:
        return f"budget reached: {rounds} acquisition rounds"
    if candidates == 0:
        return "pool exhausted: every pool case is labelled"
    return None


def plateau_reason(validation_dice: Sequence[float], patience: int | None, min_delta: float) -> str | None:
    """Stop when the best validation Dice of the last ``patience`` rounds is not ``min_delta`` above the best of
    the rounds before them (early stopping on a labelled validation split, never on the test split)."""
    if patience is None or len(validation_dice) <= patience:
        return None
    best_before, recent = max(validation_dice[:-patience]), max(validation_dice[-patience:])
    if recent >= best_before + min_delta:
        return None
    return (
        f"validation plateau: best validation Dice of the last {patience} round(s) {recent:.4f} did not beat the "
        f"earlier best {best_before:.4f} by {min_delta:g}"
    )


def uncertainty_reason(unit_scores: Sequence[float], threshold: float | None) -> str | None:
    """Stop when the mean acquisition score of the unlabelled pool is below ``threshold``."""
    if threshold is None or not unit_scores:
        return None
    mean_score = sum(unit_scores) / len(unit_scores)
    if mean_score < threshold:
        return f"low uncertainty: mean pool score {mean_score:.6g} < {threshold:g}"
    return None
