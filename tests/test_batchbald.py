"""BatchBALD for segmentation: the joint MI against brute-force enumeration, and what greedy selection buys."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from activeseg.acquisition.batchbald import greedy_batchbald, unit_outcome, unit_outcomes
from activeseg.acquisition.moments import Moments
from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.scorers import SKETCHES, gather_sites
from activeseg.acquisition.selectors import BATCHBALD_CONFIGURATIONS, BATCHBALD_SITES, SelectionContext


def exact_joint_mi(sketches: list[np.ndarray]) -> float:
    """I(y_1..n; ω) for y_i the class of a uniformly drawn site of unit i, by looping over every joint class
    configuration of the n units (float64; K models equally likely)."""
    k_models, _, classes = sketches[0].shape
    site_average = [[[float(np.mean(s[k, :, c])) for c in range(classes)] for k in range(k_models)] for s in sketches]
    joint, conditional = 0.0, 0.0
    for labels in itertools.product(range(classes), repeat=len(sketches)):
        p = sum(float(np.prod([site_average[i][k][y] for i, y in enumerate(labels)])) for k in range(k_models))
        joint -= p / k_models * np.log(p / k_models) if p > 0 else 0.0
    for unit_K_C in site_average:
        conditional -= sum(p * np.log(p) for row in unit_K_C for p in row if p > 0) / k_models
    return joint - conditional


def site_bald(sketch_K_V_C: np.ndarray) -> float:
    """The unit's mean voxel BALD over its sites: what top-k BALD ranks by."""
    p = sketch_K_V_C.astype(np.float64)
    mean_V_C = p.mean(axis=0)
    return float((-(mean_V_C * np.log(mean_V_C)).sum(axis=1) + (p * np.log(p)).sum(axis=2).mean(axis=0)).mean())


def sharp_unit(pattern: list[int], confidence: float, sites: int = 4) -> np.ndarray:
    """A small structure that model k segments (class 1) or not (background), with the given confidence."""
    p1_K = np.where(np.array(pattern) == 1, confidence, 1 - confidence)
    p1_K_V = p1_K[:, None] + np.linspace(-0.01, 0.01, sites)[None, :]  # sites differ a little
    return np.stack([1 - p1_K_V, p1_K_V], axis=2)


def test_unit_outcome_is_the_class_of_a_uniformly_drawn_site() -> None:
    sketch = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5))
    outcome = unit_outcome(sketch)
    for k, c in itertools.product(range(4), range(3)):
        assert outcome[k, c] == pytest.approx(sum(sketch[k, v, c] for v in range(5)) / 5, abs=1e-12)
    assert outcome.dtype == np.float64
    assert unit_outcome(sketch.astype(np.float32)).sum(axis=1) == pytest.approx(np.ones(4), abs=1e-12)


def test_gains_equal_brute_force_joint_mi_while_configurations_are_enumerated() -> None:
    rng = np.random.default_rng(0)
    sketches = [rng.dirichlet(np.ones(3) * 0.5, size=(6, 4)) for _ in range(9)]  # K=6, V=4, C=3
    picked, gains = greedy_batchbald(unit_outcomes(sketches), 7, np.random.default_rng(1), configurations=729)
    assert len(set(picked)) == 7  # 3^6 = 729: the batch before the 7th pick is still enumerated
    for n in range(1, 8):
        assert gains[n - 1] == pytest.approx(exact_joint_mi([sketches[i] for i in picked[:n]]), abs=1e-10)
    for n in range(1, 8):  # and each pick is the best extension of the batch before it, by brute force
        best = max(
            exact_joint_mi([sketches[i] for i in [*picked[: n - 1], j]]) for j in range(9) if j not in picked[: n - 1]
        )
        assert gains[n - 1] == pytest.approx(best, abs=1e-10)


def test_sampled_joint_mi_is_close_to_brute_force_beyond_enumeration() -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        sketches = [rng.dirichlet(np.ones(3) * 0.5, size=(6, 4)) for _ in range(10)]
        # 2000 configurations: batches of up to 6 units are enumerated (729), the 8th and 9th picks are sampled
        picked, gains = greedy_batchbald(unit_outcomes(sketches), 9, np.random.default_rng(seed), configurations=2000)
        for n in (8, 9):
            assert gains[n - 1] == pytest.approx(exact_joint_mi([sketches[i] for i in picked[:n]]), abs=0.04)


def test_greedy_beats_top_k_bald_and_random_batches_when_high_bald_units_are_duplicated() -> None:
    a = sharp_unit([1, 1, 1, 1, 0, 0, 0, 0], 0.95)  # the most informative disagreement, three times
    b = sharp_unit([1, 1, 0, 0, 1, 1, 0, 0], 0.9)  # an independent one, a little less sharp
    c = sharp_unit([1, 0, 1, 0, 1, 0, 1, 0], 0.85)
    calm = sharp_unit([1] * 8, 0.5)  # uncertain, but not about the model: BALD 0
    sketches = [a, a.copy(), b, a.copy(), c, calm, calm.copy(), b.copy()]
    bald = [site_bald(s) for s in sketches]
    top_k = list(np.argsort(-np.array(bald), kind="stable")[:3])
    assert sorted(top_k) == [0, 1, 3]  # the three copies of a
    picked, gains = greedy_batchbald(unit_outcomes(sketches), 3, np.random.default_rng(0))
    assert picked == [0, 2, 4]  # a, b, c
    chosen = exact_joint_mi([sketches[i] for i in picked])
    duplicates = exact_joint_mi([sketches[i] for i in top_k])
    every_batch = [exact_joint_mi([sketches[i] for i in batch]) for batch in itertools.combinations(range(8), 3)]
    assert gains[-1] == pytest.approx(chosen, abs=1e-10)
    assert chosen > duplicates + 0.4
    assert chosen > np.mean(every_batch) + 0.3  # the expected joint MI of a uniformly random batch
    assert chosen == pytest.approx(max(every_batch), abs=1e-12)  # here greedy finds the best batch


def test_at_the_defaults_the_objective_does_not_saturate() -> None:
    # K = 8 models, 16 sites, 3 classes, sites that disagree independently: the labelling of such a unit's 16 sites
    # alone carried 1.9-2.1 nats about the model (the old outcome), at the log K = 2.08 cap.
    rng = np.random.default_rng(0)
    logits_N_K_V_C = 2 * rng.normal(size=(20, 8, BATCHBALD_SITES, 3)) + 2 * rng.normal(size=(20, 1, BATCHBALD_SITES, 3))
    sketches = list(np.exp(logits_N_K_V_C) / np.exp(logits_N_K_V_C).sum(axis=3, keepdims=True))
    k = 6
    picked, gains = greedy_batchbald(unit_outcomes(sketches), k, np.random.default_rng(0), BATCHBALD_CONFIGURATIONS)
    exact = [exact_joint_mi([sketches[i] for i in picked[:n]]) for n in range(1, k + 1)]
    np.testing.assert_allclose(gains, exact, atol=1e-10)  # 3^5 ≤ 1000: enumerated throughout
    assert gains[-1] < np.log(8) / 4  # far from the cap ...
    assert min(np.diff(gains)) > 0.5 * gains[0]  # ... so every pick adds a clear share
    top_k = list(np.argsort(-np.array([site_bald(s) for s in sketches]), kind="stable")[:k])
    draws = np.random.default_rng(1)
    random_batches = [exact_joint_mi([sketches[i] for i in draws.choice(20, k, replace=False)]) for _ in range(20)]
    assert exact[-1] > exact_joint_mi([sketches[i] for i in top_k])
    assert exact[-1] > max(random_batches)


def test_the_selector_picks_by_the_sketches_outcomes_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    ids = [f"case_{i}" for i in range(6)]
    sketches = {c: rng.dirichlet(np.ones(3), size=(4, 5)) for c in ids}
    scores = dict.fromkeys(ids, (0.1,))

    def select() -> list[str]:  # 10 configurations: the 4th pick is sampled (27 > 10)
        context = SelectionContext(np.random.default_rng(0), sketches=sketches, configurations=10)
        return [c.unit for c in get_strategy("batchbald").select(ids, scores, 4, context)]

    picked, _ = greedy_batchbald(unit_outcomes([sketches[c] for c in ids]), 4, np.random.default_rng(0), 10)
    assert select() == select() == [ids[i] for i in picked]


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
    one = sharp_unit([1, 0], 0.9)
    with pytest.raises(ValueError, match="k must be"):
        greedy_batchbald(unit_outcomes([one]), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same number of samples"):
        unit_outcomes([one, sharp_unit([1, 0, 1], 0.9)])
    with pytest.raises(ValueError, match="no candidates"):
        unit_outcomes([])
    with pytest.raises(ValueError, match="configurations"):
        greedy_batchbald(unit_outcomes([one]), 1, np.random.default_rng(0), configurations=0)
