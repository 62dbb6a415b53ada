"""Benchmark statistics: pure functions on numbers (no files, no models).

- :func:`aubc`: area under the budget curve, normalised to [0, 1] on the budget axis (trapezoid rule);
- :func:`mean_over`: a curve's mean over a fixed budget interval (AUBC on a shared axis, such as labelled voxels);
- :func:`bootstrap_ci`: the mean with a percentile-bootstrap confidence interval (seeded numpy ``Generator``);
- :func:`paired_test`: paired differences ``a - b`` with a bootstrap CI, Wilcoxon signed-rank and paired t p-values;
- :func:`holm`: Holm's step-down adjustment of a family of p-values;
- :func:`seeds_for_power`: how many paired seeds a paired t-test needs to detect a difference of a given mean and
  spread (noncentral t), the planning figure for a comparison that did not reach significance;
- :func:`mean_ranks`: nnActive-style ranking, rank 1 best within each block (a seed and setting), ties averaged;
- :func:`budget_to_reach`: the first budget at which a curve reaches a target Dice;
- :func:`curve_band`: the mean learning curve over seeds with a bootstrap band per budget;
- :func:`foreground_efficiency`: nnActive's FG-Eff, the rate at which Dice approaches the full-data Dice as
  labelled foreground grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats


def aubc(n_labelled: Sequence[float], dice: Sequence[float]) -> float:
    """Area under the budget curve, normalised to [0, 1] on the budget axis (trapezoid rule): the curve's mean Dice.

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


def mean_over(budget: Sequence[float], dice: Sequence[float], low: float, high: float) -> float:
    """The mean of the piecewise-linear curve through (budget, dice) over [low, high] (exact: its trapezoids,
    with the ends interpolated): AUBC on an axis where runs stop at different budgets, such as labelled voxels,
    taken over an interval every compared run covers."""
    x, y = np.asarray(budget, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("need two or more points with increasing budgets")
    if not x[0] <= low < high <= x[-1]:
        raise ValueError(f"interval [{low}, {high}] is not inside the curve's budgets [{x[0]}, {x[-1]}]")
    inside = x[(x > low) & (x < high)]
    knots = np.concatenate([[low], inside, [high]])
    values = np.interp(knots, x, y)
    return float(np.sum(np.diff(knots) * (values[:-1] + values[1:]) / 2) / (high - low))


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values with a ``confidence`` bootstrap interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Percentile bootstrap CI of the mean: resample ``values`` with replacement ``resamples`` times.

    With one value the interval is that value. Deterministic under ``seed``.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("need a non-empty sequence of numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    rng = np.random.default_rng(seed)
    means_B = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means_B, [tail, 1 - tail])
    return Estimate(float(x.mean()), float(low), float(high), len(x))


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over ``n`` pairs: mean difference with a bootstrap CI and two-sided p-values.

    A p-value is None where the test is undefined (fewer than 2 pairs for t; no pairs for Wilcoxon).
    Wilcoxon is exact for n <= 50 without ties or zero differences; with n pairs its smallest possible two-sided
    p-value is 2 / 2**n (0.25 for n = 3), so it cannot reach 0.05 below 6 pairs.
    """

    n: int
    mean_difference: float
    low: float
    high: float
    wilcoxon_p: float | None
    t_p: float | None
    wins: int
    """Pairs in which ``a`` is strictly larger."""
    sd: float | None = None
    """The standard deviation of the differences (ddof 1; None below 2 pairs)."""


def paired_test(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> PairedTest:
    """Paired comparison of two equally long sequences (element i of each comes from the same seed)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError("need two equally long, non-empty sequences")
    d = x - y
    ci = bootstrap_ci(d, resamples=resamples, confidence=confidence, seed=seed)
    if np.all(d == 0):
        wilcoxon_p: float | None = 1.0
        t_p: float | None = 1.0 if len(d) >= 2 else None
    else:
        wilcoxon_p = float(scipy_stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
        t_p = None
        if len(d) >= 2:  # without spread the t statistic is infinite: p = 0
            t_p = 0.0 if np.all(d == d[0]) else float(scipy_stats.ttest_rel(x, y).pvalue)
    sd = float(np.std(d, ddof=1)) if len(d) >= 2 else None
    return PairedTest(len(d), ci.mean, ci.low, ci.high, wilcoxon_p, t_p, int(np.sum(d > 0)), sd)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order (None stays None and is not counted in the family).

    With the m defined p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Rejecting where the adjusted p < α controls the family-wise error at α.
    """
    defined = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(defined)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(defined)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def seeds_for_power(
    mean_difference: float, sd: float, alpha: float, power: float = 0.8, most: int = 1000
) -> int | None:
    """The fewest pairs (2 or more) at which a two-sided paired t-test at level ``alpha`` rejects with probability
    at least ``power`` when the true differences have this mean and standard deviation; None for a zero mean or
    beyond ``most`` pairs.

    The power at n pairs is P(|T| > t_{1−α/2, n−1}) for T noncentral t with n − 1 degrees of freedom and
    noncentrality mean / (sd / √n). Fed with a pilot's estimates it is a planning figure, as noisy as they are.
    """
    if not (0 < alpha < 1 and 0 < power < 1) or sd < 0:
        raise ValueError("need 0 < alpha < 1, 0 < power < 1 and sd >= 0")
    if mean_difference == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        df, noncentrality = n - 1, abs(mean_difference) / (sd / math.sqrt(n))
        critical = scipy_stats.t.ppf(1 - alpha / 2, df)
        reject = scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.cdf(-critical, df, noncentrality)
        if reject >= power:
            return n
    return None


def mean_ranks(table: Mapping[str, Mapping[Any, float]]) -> tuple[dict[str, float], int]:
    """Mean rank of each strategy over the blocks every strategy has (rank 1 = highest value, ties averaged).

    ``table[strategy][block]`` is a value where higher is better (AUBC, final Dice); a block is e.g. one
    (setting, seed). Returns the mean ranks and the number of blocks used.
    """
    names = sorted(table)
    if not names:
        return {}, 0
    blocks = set.intersection(*(set(table[n]) for n in names))
    ordered = sorted(blocks, key=repr)
    if not ordered:
        return dict.fromkeys(names, math.nan), 0
    values_B_S = np.array([[table[n][b] for n in names] for b in ordered], dtype=np.float64)
    ranks_B_S = np.vstack([scipy_stats.rankdata(-row, method="average") for row in values_B_S])
    return {n: float(r) for n, r in zip(names, ranks_B_S.mean(axis=0), strict=True)}, len(ordered)


def budget_to_reach(n_labelled: Sequence[int], dice: Sequence[float], target: float) -> int | None:
    """The first budget whose Dice is at least ``target``; None if the curve never reaches it."""
    for n, value in zip(n_labelled, dice, strict=True):
        if value >= target:
            return int(n)
    return None


@dataclass(frozen=True)
class Band:
    """A mean learning curve over runs with a bootstrap confidence band."""

    n_labelled: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: int


def curve_band(
    curves: Sequence[tuple[Sequence[int], Sequence[float]]],
    *,
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Band:
    """Mean Dice per budget over curves (budgets every curve has), with a bootstrap CI at each budget."""
    if not curves:
        raise ValueError("need at least one curve")
    common = sorted(set.intersection(*(set(n) for n, _ in curves)))
    points = [dict(zip(n, d, strict=True)) for n, d in curves]
    estimates = [
        bootstrap_ci([p[b] for p in points], resamples=resamples, confidence=confidence, seed=seed) for b in common
    ]
    return Band(
        [int(b) for b in common],
        [e.mean for e in estimates],
        [e.low for e in estimates],
        [e.high for e in estimates],
        len(curves),
    )


def foreground_efficiency(
    foreground_pct: Sequence[float], dice: Sequence[float], full_dice: float, start_dice: float, start_pct: float
) -> float | None:
    """nnActive's foreground efficiency (FG-Eff): the rate b of Dice(x) = c − a·exp(−b (x − x₀)), least squares.

    ``foreground_pct`` is x, the labelled share of the pool's foreground voxels in percent, at each point (every
    round of every seed of one strategy); c = ``full_dice``; x₀ = ``start_pct`` and a = c − ``start_dice`` are
    shared by every strategy of the setting (its smallest x and the mean Dice there), so only b differs: higher b
    reaches full-data Dice with less labelled foreground. None if the fit fails or there are fewer than 2 points.
    """
    x, y = np.asarray(foreground_pct, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if x.shape != y.shape or len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    a, c = full_dice - start_dice, full_dice

    def curve(xs: np.ndarray, b: float) -> np.ndarray:
        return np.asarray(c - a * np.exp(-b * (xs - start_pct)))

    try:
        (b,), _ = optimize.curve_fit(curve, x, y, p0=[0.1])
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    return float(b) if math.isfinite(b) else None
