"""Stochastic batch acquisition: probabilities by hand, sampling frequencies, limits in β."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.selection import KINDS, sampling_probabilities, stochastic_batch


def test_probabilities_match_hand_computed_weights() -> None:
    scores = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(sampling_probabilities(scores, 2.0, "power"), np.array([1, 4, 9]) / 14)
    np.testing.assert_allclose(sampling_probabilities(scores, 1.0, "softmax"), np.exp(scores) / np.exp(scores).sum())
    # ranks of (1, 2, 3) are (3, 2, 1): weights 1/3, 1/2, 1 -> (2, 3, 6) / 11
    np.testing.assert_allclose(sampling_probabilities(scores, 1.0, "softrank"), np.array([2, 3, 6]) / 11)


@pytest.mark.parametrize("kind", KINDS)
def test_first_draw_frequencies_follow_the_probabilities(kind: str) -> None:
    scores = np.array([0.1, 0.4, 0.2, 0.8, 0.5])
    expected = sampling_probabilities(scores, 2.0, kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.bincount([stochastic_batch(scores, 1, 2.0, kind, rng)[0] for _ in range(draws)], minlength=5)  # type: ignore[arg-type]
    # 5 standard errors of a binomial proportion: fails on a wrong distribution, not on noise
    tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= tolerance), (counts / draws, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_large_beta_is_top_k_and_zero_beta_is_uniform(kind: str) -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(50) + 0.01
    top = np.argsort(-scores)[:5]
    assert list(stochastic_batch(scores, 5, 1e4 if kind != "softrank" else 1e3, kind, rng)) == list(top)  # type: ignore[arg-type]
    np.testing.assert_allclose(sampling_probabilities(scores, 0.0, kind), np.full(50, 1 / 50))  # type: ignore[arg-type]


def test_batch_is_distinct_and_seeded() -> None:
    scores = np.linspace(0.1, 1.0, 30)
    a = stochastic_batch(scores, 10, 1.0, "power", np.random.default_rng(5))
    assert len(set(a.tolist())) == 10
    assert np.array_equal(a, stochastic_batch(scores, 10, 1.0, "power", np.random.default_rng(5)))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="beta must be"):
        stochastic_batch(np.ones(3), 1, -1.0, "power", np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-negative scores"):
        stochastic_batch(np.array([-1.0, 1.0]), 1, 1.0, "power", np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        stochastic_batch(np.ones(3), 4, 1.0, "power", np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        stochastic_batch(np.array([np.nan, 1.0]), 1, 1.0, "softmax", np.random.default_rng(0))
