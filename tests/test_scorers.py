"""Scorers (functions of the moments of K samples) against a float64 numpy reference computed from the K samples
themselves, and their invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.acquisition.moments import MissingMomentError, MomentName, Moments
from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.scorers import (
    NEEDS,
    SCORERS,
    SKETCHES,
    bald,
    class_predictive_entropy,
    expected_entropy,
    foreground_entropy,
    make_reduction,
    margin,
    moments_needed,
    predictive_entropy,
    reduce_foreground,
    reduce_mean,
    reduce_sum,
    reduce_top_q,
    strategy_maps,
    top_indices,
    top_sites,
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
    """The scorer called ``name`` computed from the K samples directly (float64), not through moments."""
    p = probs.double().numpy()
    mean = p.mean(axis=0)
    pe = entropy_np(mean, axis=0)
    ee = entropy_np(p, axis=1).mean(axis=0)
    ordered = np.sort(mean, axis=0)
    maps: dict[str, np.ndarray] = {
        "predictive_entropy": pe,
        "foreground_entropy": entropy_np(mean[1:], axis=0),  # MONAI Label: the background channel dropped
        "expected_entropy": ee,
        "bald": pe - ee,
        "variance": p.var(axis=0).mean(axis=0),
        "margin": 1.0 - (ordered[-1] - ordered[-2]),
        "clasp": np.concatenate([pe[None], pe[None] * mean[1:]]),  # PE, then PE · p̄_c per foreground class
        # ... then the expected cost: background costs 1, foreground FOREGROUND_WEIGHT = 3
        "clasp_cost": np.concatenate([pe[None], pe[None] * mean[1:], (mean[0] + 3.0 * mean[1:].sum(axis=0))[None]]),
    }
    return maps[name]


@pytest.mark.parametrize("name", sorted(SCORERS))
@pytest.mark.parametrize("seed", range(5))
def test_scorer_matches_float64_reference(name: str, seed: int) -> None:
    probs = random_probs(seed, k=3 + seed)
    got = SCORERS[name](Moments.of(probs))
    assert got.dtype == torch.float32 and got.shape[-3:] == probs.shape[2:]
    np.testing.assert_allclose(got.double().numpy(), np.maximum(reference(name, probs), 0), atol=2e-6)
    torch.testing.assert_close(strategy_maps(name, Moments.of(probs)), got.reshape(-1, *probs.shape[2:]))


def test_moments_of_samples_against_numpy() -> None:
    probs = random_probs(12, k=5)
    before = probs.clone()
    moments = Moments.of(probs)
    assert torch.equal(probs, before)
    p = probs.double().numpy()
    for got, expected in [
        (moments.mean_probs_C_D_H_W, p.mean(axis=0)),
        (moments.mean_entropy_D_H_W, entropy_np(p, axis=1).mean(axis=0)),
        (moments.mean_sq_probs_C_D_H_W, (p**2).mean(axis=0)),
    ]:
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-6)
    assert moments.shape == (4, 5, 3) and moments.num_classes == 3
    cropped = moments.crop((slice(1, 3), slice(None), slice(2, 3)))
    torch.testing.assert_close(cropped.mean_entropy_D_H_W, moments.mean_entropy_D_H_W[1:3, :, 2:3])
    with pytest.raises(ValueError, match="4 moment channels do not fit"):
        Moments.from_channels(torch.zeros(4, 2, 2, 2))


@pytest.mark.parametrize("needs", [frozenset(), frozenset({"entropy"}), frozenset({"squares"})])
def test_moments_computed_only_as_needed_are_those_of_every_moment(needs: frozenset[MomentName]) -> None:
    probs = random_probs(4)
    every, some = Moments.of(probs), Moments.of(probs, needs)
    torch.testing.assert_close(some.mean_probs_C_D_H_W, every.mean_probs_C_D_H_W, atol=0, rtol=0)

    def read(m: Moments, name: str) -> torch.Tensor:
        return m.mean_entropy_D_H_W if name == "entropy" else m.mean_sq_probs_C_D_H_W

    for name in ("entropy", "squares"):
        if name in needs:
            torch.testing.assert_close(read(some, name), read(every, name), atol=0, rtol=0)
            cropped = some.crop((slice(1, 3),) * 3)
            torch.testing.assert_close(read(cropped, name), read(every, name)[..., 1:3, 1:3, 1:3])
        else:
            with pytest.raises(MissingMomentError, match=f"the {name} moment was not computed"):
                read(some, name)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_each_scorer_reads_only_the_moments_it_declares(name: str) -> None:
    """A scorer given only p̄ and its declared moments scores exactly as with every moment (a scorer that read an
    undeclared moment would raise MissingMomentError)."""
    probs = random_probs(5)
    declared = Moments.of(probs, moments_needed(name))
    torch.testing.assert_close(strategy_maps(name, declared), strategy_maps(name, Moments.of(probs)), atol=0, rtol=0)


def test_every_sketch_declares_its_moments_and_nothing_else_is_declared() -> None:
    assert set(NEEDS) == set(SCORERS) | set(SKETCHES)
    probs = random_probs(6)
    for name, choose in SKETCHES.items():
        region = (slice(0, 3), slice(None), slice(1, None))
        got = choose(Moments.of(probs, moments_needed("margin", name)), region, 5)
        torch.testing.assert_close(got, choose(Moments.of(probs), region, 5), atol=0, rtol=0)
    with pytest.raises(KeyError, match="no moments declared for 'entropy_of_nothing'"):
        moments_needed("entropy_of_nothing")


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorer_does_not_mutate_and_is_permutation_invariant(name: str) -> None:
    probs = random_probs(7)
    moments = Moments.of(probs)
    fields = [
        t.clone() for t in (moments.mean_probs_C_D_H_W, moments.mean_entropy_D_H_W, moments.mean_sq_probs_C_D_H_W)
    ]
    score = SCORERS[name](moments)
    score.add_(1.0)  # the output is the caller's own: writing to it leaves the moments alone
    after = (moments.mean_probs_C_D_H_W, moments.mean_entropy_D_H_W, moments.mean_sq_probs_C_D_H_W)
    assert all(torch.equal(a, b) for a, b in zip(after, fields, strict=True))
    permuted = probs[torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(1))]
    torch.testing.assert_close(SCORERS[name](Moments.of(permuted)), score - 1.0, atol=1e-6, rtol=0)


def test_bald_non_negative_and_zero_when_samples_agree() -> None:
    for seed in range(10):
        assert float(bald(Moments.of(random_probs(seed))).min()) >= 0.0
    one = random_probs(3, k=1)
    agreeing = Moments.of(one.expand(8, *one.shape[1:]).clone())
    assert float(bald(agreeing).abs().max()) < 1e-6
    assert float(variance(agreeing).abs().max()) < 1e-6
    torch.testing.assert_close(predictive_entropy(agreeing), expected_entropy(agreeing))


def test_hand_checked_values() -> None:
    # Two samples, two classes, one voxel: p1 = (1, 0), p2 = (0, 1) -> mean (0.5, 0.5).
    moments = Moments.of(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1, 1))
    assert float(predictive_entropy(moments)) == pytest.approx(np.log(2))
    assert float(expected_entropy(moments)) == pytest.approx(0.0)
    assert float(bald(moments)) == pytest.approx(np.log(2))


def test_top_indices_is_a_stable_argsort_prefix() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        score = rng.integers(0, 4, size=rng.integers(1, 40)).astype(np.float32)  # many ties
        count = int(rng.integers(0, score.size + 2))
        expected = np.sort(np.argsort(-score, kind="stable")[:count])
        np.testing.assert_array_equal(top_indices(torch.from_numpy(score), count).numpy(), expected)


def test_top_sites_are_the_units_highest_bald_voxels() -> None:
    probs = random_probs(5, shape=(6, 5, 4))
    moments = Moments.of(probs)
    region = (slice(2, 5), slice(None), slice(1, 3))
    sites = top_sites(moments, region, 4)
    p = probs.double().numpy()[:, :, 2:5, :, 1:3]
    mean = p.mean(axis=0)
    score = entropy_np(mean, axis=0) - entropy_np(p, axis=1).mean(axis=0)
    top = np.sort(np.argsort(-score.ravel(), kind="stable")[:4])
    expected = np.stack(np.unravel_index(top, score.shape), axis=1) + np.array([2, 0, 1])
    np.testing.assert_array_equal(sites.numpy(), expected)
    assert len(top_sites(moments, (slice(0, 1), slice(0, 1), slice(0, 2)), 16)) == 2  # V <= the unit's voxels


def test_reductions_against_numpy() -> None:
    probs = random_probs(11, shape=(6, 7, 5))
    score = bald(Moments.of(probs))
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
    moments = Moments.of(probs)
    got = class_predictive_entropy(moments)
    p = probs.double().numpy()
    mean = p.mean(axis=0)
    np.testing.assert_allclose(got.double().numpy(), entropy_np(mean, axis=0)[None] * mean, atol=2e-6)
    # The per-class maps sum to PE, because the mean probabilities sum to one.
    torch.testing.assert_close(got.sum(dim=0), predictive_entropy(moments), atol=1e-5, rtol=0)


def test_variance_and_margin_hand_checked() -> None:
    # Two samples, two classes, one voxel: p1 = (1, 0), p2 = (0, 1): variance 0.25 per class; mean (0.5, 0.5): margin 1.
    probs = Moments.of(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1, 1))
    assert float(variance(probs)) == pytest.approx(0.25)
    assert float(margin(probs)) == pytest.approx(1.0)
    certain = Moments.of(torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(2, 2, 1, 1, 1))
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


def test_epistemic_is_monai_labels_foreground_entropy_and_ranks_unlike_full_entropy() -> None:
    # two classes, one voxel each: p̄₁ = 0.5 maximises the full entropy, p̄₁ = 1/e MONAI Label's foreground term
    half, e_inv = 0.5, float(np.exp(-1.0))
    probs = torch.tensor([[1 - half, half], [1 - e_inv, e_inv]], dtype=torch.float32).T.reshape(1, 2, 2, 1, 1)
    moments = Moments.of(probs)
    monai_label = -(np.array([half, e_inv]) * np.log([half, e_inv]))  # their numpy formula on the foreground channel
    np.testing.assert_allclose(foreground_entropy(moments).double().numpy().ravel(), monai_label, atol=1e-6)
    assert float(foreground_entropy(moments).ravel()[1]) > float(foreground_entropy(moments).ravel()[0])
    assert float(predictive_entropy(moments).ravel()[0]) > float(predictive_entropy(moments).ravel()[1])
    assert STRATEGIES["epistemic"].scorer == "foreground_entropy"
    assert STRATEGIES["entropy"].scorer == "predictive_entropy"
