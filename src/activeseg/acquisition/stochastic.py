"""Stochastic batch acquisition (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal, TMLR 2023).

Instead of the top-k scores, sample k units without replacement with probability proportional to

- power:    score^β
- softmax:  exp(β · score)
- softrank: rank^-β        (rank 1 = highest score)

Sampling without replacement is done with the Gumbel-top-k trick: add independent Gumbel(0, 1) noise to the log
weights and keep the k largest. This is exact sequential sampling without replacement (Kool et al., ICML 2019).
β → ∞ recovers top-k; β = 0 is uniform random. With BALD scores and power sampling this is PowerBALD.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Weighting = Literal["power", "softmax", "softrank"]
WEIGHTINGS: tuple[Weighting, ...] = ("power", "softmax", "softrank")


def log_weights(scores_N: np.ndarray, beta: float, weighting: Weighting) -> np.ndarray:
    """Unnormalised log sampling weights of each unit (float64).

    Power sampling gives a score of exactly 0 the weight 0 (log weight −inf): such a unit is drawn only after every
    positive one. If every score is 0 (or β = 0) all weights are equal.
    """
    if beta < 0 or not np.isfinite(beta):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    scores = np.asarray(scores_N, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if weighting == "power":
        if np.any(scores < 0):
            raise ValueError("power sampling needs non-negative scores")
        if beta == 0 or not np.any(scores > 0):
            return np.zeros(len(scores))
        with np.errstate(divide="ignore"):
            return np.asarray(beta * np.log(scores))
    if weighting == "softmax":
        return beta * scores
    if weighting == "softrank":
        ranks = np.empty(len(scores))
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
        return -beta * np.log(ranks)
    raise ValueError(f"unknown stochastic acquisition {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def sampling_probabilities(scores_N: np.ndarray, beta: float, weighting: Weighting) -> np.ndarray:
    """The probability of each unit being the first one drawn (the normalised weights)."""
    logw = log_weights(scores_N, beta, weighting)
    weights = np.exp(logw - logw.max())
    return np.asarray(weights / weights.sum())


def stochastic_batch(
    scores_N: np.ndarray, k: int, beta: float, weighting: Weighting, rng: np.random.Generator
) -> np.ndarray:
    """Indices of k units sampled without replacement ∝ the weights, in draw order. Units of weight 0 come after
    every positive one, uniformly among themselves."""
    if not 0 < k <= len(scores_N):
        raise ValueError(f"k must be in [1, {len(scores_N)}], got {k}")
    logw, gumbel = log_weights(scores_N, beta, weighting), rng.gumbel(size=len(scores_N))
    possible = np.isfinite(logw)
    perturbed = np.where(possible, logw, 0.0) + gumbel
    return np.lexsort((-perturbed, ~possible))[:k]


def scheduled_beta(schedule: str, start: float, end: float | None, round_index: int, rounds: int) -> float:
    """β of acquisition round ``round_index`` (0-based) out of ``rounds``, moving from ``start`` to ``end``.

    ``exponential`` interpolates geometrically; ``sigmoid`` follows a logistic curve (slope 12, centred at the middle
    round) rescaled to hit both ends exactly. A growing β means decaying noise, as in ClaSP PE (Lüth et al., 2026).
    """
    if schedule == "constant" or end is None:
        return start
    t = min(max(round_index / max(rounds - 1, 1), 0.0), 1.0)
    if schedule == "exponential":
        return float(start * (end / start) ** t)
    if schedule == "sigmoid":

        def logistic(x: float) -> float:
            return 1.0 / (1.0 + math.exp(-12.0 * (x - 0.5)))

        fraction = (logistic(t) - logistic(0.0)) / (logistic(1.0) - logistic(0.0))
        return start + (end - start) * fraction
    raise ValueError(f"unknown beta schedule {schedule!r}; valid: constant, exponential, sigmoid")
