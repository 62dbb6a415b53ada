"""Benchmark statistics against references computed another way: by hand, by enumeration, by closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from activeseg.bench.stats import (
    aubc,
    bootstrap_ci,
    budget_to_reach,
    curve_band,
    foreground_efficiency,
    holm,
    mean_over,
    mean_ranks,
    paired_test,
    seeds_for_power,
)


def test_aubc_by_hand() -> None:
    # trapezoids: (10 - 5) * (0.5 + 0.7) / 2 = 3.0 and (20 - 10) * (0.7 + 0.8) / 2 = 7.5; span 15 → 10.5 / 15
    assert aubc([5, 10, 20], [0.5, 0.7, 0.8]) == pytest.approx(0.7, abs=1e-15)
    assert aubc([5, 10, 15], [0.6, 0.6, 0.6]) == pytest.approx(0.6)  # a flat curve: its Dice
    assert aubc([5], [0.42]) == 0.42
    with pytest.raises(ValueError, match="increase"):
        aubc([5, 5], [0.1, 0.2])


def test_mean_over_an_interval_by_hand_and_against_fine_sampling() -> None:
    budget, dice = [100, 200, 400], [0.5, 0.7, 0.8]
    assert mean_over(budget, dice, 100, 400) == pytest.approx(aubc(budget, dice))  # the whole curve: its AUBC
    # [150, 300]: Dice 0.6 at 150 and 0.75 at 300; trapezoids 50 * (0.6 + 0.7) / 2 = 32.5 and
    # 100 * (0.7 + 0.75) / 2 = 72.5, over a width of 150 → 0.7
    assert mean_over(budget, dice, 150, 300) == pytest.approx(0.7, abs=1e-15)
    fine = np.linspace(150, 300, 300_001)
    assert mean_over(budget, dice, 150, 300) == pytest.approx(float(np.interp(fine, budget, dice).mean()), abs=1e-6)
    assert mean_over(budget, dice, 250, 350) == pytest.approx(0.75)  # a straight piece: the Dice at its middle
    with pytest.raises(ValueError, match="not inside"):
        mean_over(budget, dice, 50, 300)
    with pytest.raises(ValueError, match="increasing"):
        mean_over([1, 1], [0.1, 0.2], 1, 1)


def exact_bootstrap_quantile(values: list[float], q: float) -> float:
    """Inverse CDF of the exact bootstrap distribution of the mean (every n**n resample, equally likely)."""
    means = sorted(float(np.mean(pick)) for pick in itertools.product(values, repeat=len(values)))
    return means[math.ceil(q * len(means)) - 1]


def test_bootstrap_ci_matches_exhaustive_enumeration() -> None:
    values = [0.61, 0.70, 0.74, 0.79, 0.93]
    estimate = bootstrap_ci(values, resamples=200_000, confidence=0.95, seed=3)
    assert estimate.mean == pytest.approx(np.mean(values)) and estimate.n == 5
    # the Monte Carlo quantile lies between the exact quantiles a little either side of 2.5% and 97.5%
    assert exact_bootstrap_quantile(values, 0.02) <= estimate.low <= exact_bootstrap_quantile(values, 0.03)
    assert exact_bootstrap_quantile(values, 0.97) <= estimate.high <= exact_bootstrap_quantile(values, 0.98)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)  # seeded: reproducible
    assert bootstrap_ci([0.5]) == bootstrap_ci([0.5], seed=9) and bootstrap_ci([0.5]).low == 0.5
    with pytest.raises(ValueError):
        bootstrap_ci([])


def exact_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value by enumerating all 2**n sign flips (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    observed = ranks[d > 0].sum()
    statistics = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in itertools.product([0, 1], repeat=len(d))
    ]
    lower = np.mean([w <= observed for w in statistics])
    upper = np.mean([w >= observed for w in statistics])
    return float(min(1.0, 2 * min(lower, upper)))


@pytest.mark.parametrize(
    "d",
    [[0.03, -0.01, 0.05, 0.02, 0.07, -0.04], [0.011, 0.02, 0.035], [-0.2, -0.1, 0.05, -0.3, -0.25, -0.06, 0.15]],
)
def test_wilcoxon_p_matches_sign_flip_enumeration(d: list[float]) -> None:
    b = np.linspace(0.5, 0.6, len(d))
    result = paired_test((b + np.array(d)).tolist(), b.tolist())
    assert result.n == len(d)
    assert result.mean_difference == pytest.approx(np.mean(d))
    assert result.wins == sum(x > 0 for x in d)
    assert result.wilcoxon_p == pytest.approx(exact_wilcoxon_p(np.array(d)), abs=1e-12)


def test_paired_t_p_matches_the_closed_form_for_three_pairs() -> None:
    a, b = np.array([0.80, 0.78, 0.83]), np.array([0.76, 0.77, 0.79])
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    closed_form = 1 - abs(t) / math.sqrt(2 + t * t)  # two-sided p of Student's t with 2 degrees of freedom
    result = paired_test(a.tolist(), b.tolist())
    assert result.t_p == pytest.approx(closed_form, rel=1e-9)
    assert result.wilcoxon_p == pytest.approx(0.25)  # all three positive: the smallest p three pairs can give
    assert result.sd == pytest.approx(float(np.std(d, ddof=1)))
    assert result.low <= result.mean_difference <= result.high


def test_paired_test_degenerate_cases() -> None:
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (same.mean_difference, same.wilcoxon_p, same.t_p, same.wins) == (0.0, 1.0, 1.0, 0)
    single = paired_test([0.7], [0.6])
    assert single.t_p is None and single.n == 1
    constant = paired_test([0.75, 0.5], [0.5, 0.25])
    assert constant.t_p == 0.0
    with pytest.raises(ValueError):
        paired_test([0.1, 0.2], [0.1])


def test_mean_ranks_by_hand_with_ties() -> None:
    table = {
        "a": {"s0": 0.8, "s1": 0.5, "s2": 0.9},
        "b": {"s0": 0.8, "s1": 0.6},
        "c": {"s0": 0.7, "s1": 0.7, "s2": 0.1},
    }
    # s2 is missing for b and is left out; s0: a and b tie for 1st (1.5 each), c 3rd; s1: c 1st, b 2nd, a 3rd
    ranks, blocks = mean_ranks(table)
    assert blocks == 2
    assert ranks == {"a": pytest.approx(2.25), "b": pytest.approx(1.75), "c": pytest.approx(2.0)}
    assert sum(ranks.values()) == pytest.approx(6.0)  # ranks 1 + 2 + 3 per block
    assert mean_ranks({}) == ({}, 0)


def test_budget_to_reach() -> None:
    assert budget_to_reach([5, 10, 15, 20], [0.5, 0.79, 0.81, 0.80], 0.8) == 15
    assert budget_to_reach([5, 10], [0.5, 0.6], 0.8) is None
    assert budget_to_reach([5], [0.9], 0.8) == 5


def test_curve_band_uses_common_budgets() -> None:
    band = curve_band([([5, 10, 15], [0.5, 0.6, 0.7]), ([5, 10], [0.7, 0.8])], resamples=1000)
    assert band.n_labelled == [5, 10] and band.n == 2
    assert band.mean == pytest.approx([0.6, 0.7])
    assert all(lo <= m <= hi for lo, m, hi in zip(band.low, band.mean, band.high, strict=True))
    assert band.low[0] == pytest.approx(0.5) and band.high[0] == pytest.approx(0.7)  # two values: [min, max]


def test_holm_by_hand() -> None:
    # m = 4 defined p-values, sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06,
    # 1·0.04 = 0.04 raised to the running maximum 0.06; None is not part of the family.
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == [] and holm([None]) == [None]
    # Holm never rejects fewer than Bonferroni and never more than the unadjusted test.
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.1, 12).tolist()
    adjusted = holm(p)
    for raw, adj in zip(p, adjusted, strict=True):
        assert adj is not None and raw <= adj <= min(1.0, 12 * raw)


def test_foreground_efficiency_recovers_the_rate_of_a_known_curve() -> None:
    c, start_dice, x0 = 0.85, 0.50, 2.0
    x = np.array([2.0, 6.0, 10.0, 20.0, 40.0] * 3)
    noise = np.random.default_rng(1).normal(0, 0.002, len(x))
    rates = {}
    for b in (0.05, 0.2):
        y = c - (c - start_dice) * np.exp(-b * (x - x0)) + noise
        rates[b] = foreground_efficiency(x.tolist(), y.tolist(), c, start_dice, x0)
    assert rates[0.05] == pytest.approx(0.05, rel=0.05) and rates[0.2] == pytest.approx(0.2, rel=0.05)
    assert foreground_efficiency([1.0], [0.5], c, start_dice, x0) is None  # one point fits nothing
    assert foreground_efficiency([1.0, float("nan")], [0.5, 0.6], c, start_dice, x0) is None


@pytest.mark.parametrize(("effect", "pairs"), [(0.5, 34), (0.8, 15), (1.0, 10)])
def test_seeds_for_power_matches_published_paired_t_sample_sizes(effect: float, pairs: int) -> None:
    """Cohen's paired effect size d_z = mean / sd, two-sided α = 0.05, power 0.8: the sample sizes G*Power gives."""
    assert seeds_for_power(effect * 0.004, 0.004, 0.05) == pairs
    assert seeds_for_power(-effect, 1.0, 0.05) == pairs  # two-sided: the sign does not matter


def test_seeds_for_power_agrees_with_simulated_paired_t_tests() -> None:
    """Simulated experiments at the returned n reject at least 80% of the time, and at n − 1 less often."""
    mean, sd, alpha = 0.0044, 0.0043, 0.05 / 3  # the shape of a fair comparison in BENCHMARKS.md, Bonferroni of 3
    n = seeds_for_power(mean, sd, alpha)
    assert n is not None and 5 < n < 40
    rng = np.random.default_rng(0)

    def rejection_rate(pairs: int) -> float:
        d = rng.normal(mean, sd, size=(20_000, pairs))
        return float(np.mean(scipy_stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha))

    assert rejection_rate(n) >= 0.8 - 0.01  # 20,000 experiments: standard error about 0.003
    assert rejection_rate(n - 1) < 0.8 + 0.01


def test_seeds_for_power_edge_cases() -> None:
    assert seeds_for_power(0.0, 0.01, 0.05) is None  # nothing to detect
    assert seeds_for_power(0.01, 0.0, 0.05) == 2  # no spread: the smallest test detects it
    assert seeds_for_power(0.001, 1.0, 0.05, most=50) is None  # needs far more than 50
    for alpha, power, sd in ((0.0, 0.8, 1.0), (0.05, 1.0, 1.0), (0.05, 0.8, -1.0)):
        with pytest.raises(ValueError):
            seeds_for_power(0.1, sd, alpha, power)
