"""Scorers against a float64 numpy reference, and their invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.acquisition.scorers import (
    SCORERS,
    bald,
    class_predictive_entropy,
    expected_entropy,
    make_reduction,
    margin,
    predictive_entropy,
    reduce_foreground,
    reduce_mean,
    reduce_sum,
    reduce_top_q,
    variance,
)
from activeseg.bench.stats import aubc


def random_probs(seed: int, k: int = 6, c: int = 3, shape: tuple[int, ...] = (4, 5, 3)) -> torch.Tensor:
    logits = np.random.default_rng(seed).normal(scale=3.0, size=(k, c, *shape))
    return torch.softmax(torch.from_numpy(logits), dim=1).float()


def entropy_np(p: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    entropy: np.ndarray = -terms.sum(axis=axis)
    return entropy


def reference(name: str, probs: torch.Tensor) -> np.ndarray:
    p = probs.double().numpy()
    mean = p.mean(axis=0)
    pe = entropy_np(mean, axis=0)
    ee = entropy_np(p, axis=1).mean(axis=0)
    ordered = np.sort(mean, axis=0)
    references: dict[str, np.ndarray] = {
        "predictive_entropy": pe,
        "expected_entropy": ee,
        "bald": pe - ee,
        "variance": p.var(axis=0).mean(axis=0),
        "margin": 1.0 - (ordered[-1] - ordered[-2]),
        "clasp": np.concatenate([pe[None], pe[None] * mean[1:]]),  # PE, then PE · p̄_c per foreground class
    }
    return references[name]


@pytest.mark.parametrize("name", sorted(SCORERS))
@pytest.mark.parametrize("seed", range(5))
def test_scorer_matches_float64_reference(name: str, seed: int) -> None:
    probs = random_probs(seed)
    got = SCORERS[name](probs)
    assert got.shape[-3:] == probs.shape[2:]
    np.testing.assert_allclose(got.double().numpy(), np.maximum(reference(name, probs), 0), atol=2e-6)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorer_does_not_mutate_and_is_permutation_invariant(name: str) -> None:
    probs = random_probs(7)
    before = probs.clone()
    score = SCORERS[name](probs)
    assert torch.equal(probs, before)
    permuted = probs[torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(1))]
    torch.testing.assert_close(SCORERS[name](permuted), score, atol=1e-6, rtol=0)


def test_bald_non_negative_and_zero_when_samples_agree() -> None:
    for seed in range(10):
        assert float(bald(random_probs(seed)).min()) >= 0.0
    one = random_probs(3, k=1)
    agreeing = one.expand(8, *one.shape[1:]).clone()
    assert float(bald(agreeing).abs().max()) < 1e-6
    torch.testing.assert_close(predictive_entropy(agreeing), expected_entropy(agreeing))


def test_hand_checked_values() -> None:
    # Two samples, two classes, one voxel: p1 = (1, 0), p2 = (0, 1) -> mean (0.5, 0.5).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1, 1)
    assert float(predictive_entropy(probs)) == pytest.approx(np.log(2))
    assert float(expected_entropy(probs)) == pytest.approx(0.0)
    assert float(bald(probs)) == pytest.approx(np.log(2))


def test_reductions_against_numpy() -> None:
    probs = random_probs(11, shape=(6, 7, 5))
    score = bald(probs)
    mean_probs = probs.mean(dim=0)
    s, m = score.double().numpy(), mean_probs.double().numpy()
    assert reduce_mean(score, mean_probs) == pytest.approx(s.mean())
    top = np.sort(s.ravel())[::-1][: round(0.1 * s.size)]
    assert reduce_top_q(score, mean_probs, 0.1) == pytest.approx(top.mean())
    assert reduce_top_q(score, mean_probs, 1e-9) == pytest.approx(s.max())
    weight = 1 - m[0]
    assert reduce_foreground(score, mean_probs) == pytest.approx((s * weight).sum() / weight.sum())
    assert make_reduction("top_q", 0.1)(score, mean_probs) == pytest.approx(top.mean())


def test_class_predictive_entropy_against_numpy_and_hand_values() -> None:
    probs = random_probs(4)
    before = probs.clone()
    got = class_predictive_entropy(probs)
    p = probs.double().numpy()
    mean = p.mean(axis=0)
    np.testing.assert_allclose(got.double().numpy(), entropy_np(mean, axis=0)[None] * mean, atol=2e-6)
    assert torch.equal(probs, before)
    # The per-class maps sum to PE, because the mean probabilities sum to one.
    torch.testing.assert_close(got.sum(dim=0), predictive_entropy(probs), atol=1e-5, rtol=0)


def test_variance_and_margin_hand_checked() -> None:
    # Two samples, two classes, one voxel: p1 = (1, 0), p2 = (0, 1): variance 0.25 per class; mean (0.5, 0.5): margin 1.
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1, 1)
    assert float(variance(probs)) == pytest.approx(0.25)
    assert float(margin(probs)) == pytest.approx(1.0)
    certain = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(2, 2, 1, 1, 1)
    assert float(variance(certain)) == pytest.approx(0.0)
    assert float(margin(certain)) == pytest.approx(0.0)


def test_sum_reduction() -> None:
    score = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2)
    assert reduce_sum(score, torch.zeros(3, 2, 2, 2)) == pytest.approx(28.0)


def test_foreground_reduction_falls_back_to_mean_without_foreground() -> None:
    mean_probs = torch.zeros(3, 2, 2, 2)
    mean_probs[0] = 1.0
    score = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2)
    assert reduce_foreground(score, mean_probs) == pytest.approx(3.5)


def test_unknown_reduction_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid: mean, top_q, foreground, sum"):
        make_reduction("median")


def test_aubc_against_hand_computed_areas() -> None:

    assert aubc([5, 10, 15, 20], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    # (5 * (0.2 + 0.6) / 2 + 10 * (0.6 + 0.8) / 2) / 15 = (2 + 7) / 15
    assert aubc([5, 10, 20], [0.2, 0.6, 0.8]) == pytest.approx(9 / 15)
    assert aubc([5], [0.7]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="increase"):
        aubc([5, 5], [0.1, 0.2])
