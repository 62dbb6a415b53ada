"""BatchBALD for segmentation: the Monte Carlo joint MI against exact enumeration, and greedy-correctness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from activeseg.acquisition.batchbald import conditional_entropy, greedy_batchbald
from activeseg.acquisition.moments import Moments
from activeseg.acquisition.scorers import SKETCHES, gather_sites


def exact_joint_mi(sketches: list[np.ndarray]) -> float:
    """I(y_1..n; ω) by enumerating every joint labelling of every site (float64)."""
    k_models, _, classes = sketches[0].shape
    stacked_K_T_C = np.concatenate(sketches, axis=1)  # all sites of all units
    entropy = 0.0
    for labels in itertools.product(range(classes), repeat=stacked_K_T_C.shape[1]):
        p = np.mean([np.prod([stacked_K_T_C[k, t, c] for t, c in enumerate(labels)]) for k in range(k_models)])
        entropy -= p * np.log(p) if p > 0 else 0.0
    return float(entropy - sum(conditional_entropy(s) for s in sketches))


def exact_greedy(sketches: list[np.ndarray], k: int) -> list[int]:
    picked: list[int] = []
    for _ in range(k):
        gains = [
            (exact_joint_mi([sketches[i] for i in [*picked, j]]), -j) for j in range(len(sketches)) if j not in picked
        ]
        picked.append(-max(gains)[1])
    return picked


def unit(pattern: list[float]) -> np.ndarray:
    """One site, two classes: p_k(class 1) = pattern[k]."""
    p1 = np.array(pattern)
    return np.stack([1 - p1, p1], axis=1)[:, None, :]  # K x V=1 x C=2


def test_joint_mi_estimate_matches_exact_enumeration() -> None:
    rng = np.random.default_rng(0)
    sketches = [rng.dirichlet(np.ones(3), size=(4, 2)) for _ in range(3)]  # K=4, V=2, C=3
    picked, gains = greedy_batchbald(sketches, 3, np.random.default_rng(1), configurations=40_000)
    for n in range(1, 4):
        assert gains[n - 1] == pytest.approx(exact_joint_mi([sketches[i] for i in picked[:n]]), abs=0.02)


def test_batchbald_skips_a_duplicate_that_top_k_bald_would_take() -> None:
    a = unit([0.95, 0.05, 0.95, 0.05])  # models disagree in pattern 1010
    b = unit([0.9, 0.9, 0.1, 0.1])  # a different disagreement pattern, slightly less uncertain
    calm = unit([0.5, 0.5, 0.5, 0.5])  # uncertain but not about the model: BALD 0
    sketches = [a, a.copy(), b, calm]
    individual = [exact_joint_mi([s]) for s in sketches]
    assert individual[0] == individual[1] > individual[2] > individual[3] == pytest.approx(0, abs=1e-12)
    assert exact_greedy(sketches, 2) == [0, 2]  # the exact objective skips the duplicate
    picked, _ = greedy_batchbald(sketches, 2, np.random.default_rng(0), configurations=5000)
    assert picked == [0, 2]


def test_greedy_agrees_with_exact_greedy_on_random_small_cases() -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        sketches = [rng.dirichlet(np.ones(2) * 0.5, size=(5, 1)) for _ in range(5)]
        exact = exact_greedy(sketches, 3)
        gains_exact = [exact_joint_mi([sketches[i] for i in exact[:n]]) for n in (1, 2, 3)]
        picked, _ = greedy_batchbald(sketches, 3, np.random.default_rng(seed), configurations=50_000)
        # Picks agree, or the estimate chose a unit whose exact joint MI is within noise of the best one.
        gains_picked = [exact_joint_mi([sketches[i] for i in picked[:n]]) for n in (1, 2, 3)]
        np.testing.assert_allclose(gains_picked, gains_exact, atol=0.01)


def test_site_sketch_takes_the_highest_bald_voxels() -> None:
    probs = torch.softmax(torch.randn(4, 3, 2, 3, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    sites = SKETCHES["sites"](Moments.of(probs), (slice(None),) * 3, 3)
    sketch = gather_sites(probs, sites).numpy()
    assert sketch.shape == (4, 3, 3) and sketch.dtype == np.float64
    p = probs.double().numpy()
    mean = p.mean(axis=0)
    bald = -(mean * np.log(mean)).sum(axis=0) + (p * np.log(p)).sum(axis=1).mean(axis=0)  # from the samples
    top = np.sort(np.argsort(-bald.flatten(), kind="stable")[:3])
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(sites.T.numpy()), bald.shape), top)
    np.testing.assert_allclose(sketch, p.reshape(4, 3, -1)[:, :, top].transpose(0, 2, 1))
    np.testing.assert_allclose(sketch.sum(axis=2), 1.0, atol=1e-6)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="k must be"):
        greedy_batchbald([unit([0.5, 0.5])], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same number of samples"):
        greedy_batchbald([unit([0.5, 0.5]), unit([0.5, 0.5, 0.5])], 1, np.random.default_rng(0))
