"""Stochastic batch acquisition: probabilities by hand, sampling frequencies, limits in β."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from activeseg.acquisition.costs import COSTS, CostContext, information_per_cost
from activeseg.acquisition.moments import Moments
from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.scorers import expected_cost, predictive_entropy, strategy_maps
from activeseg.acquisition.selectors import SelectionContext, clasp_quotas, select_top_k, spread_selector
from activeseg.acquisition.stochastic import WEIGHTINGS, sampling_probabilities, scheduled_beta, stochastic_batch
from activeseg.acquisition.units import Unit, UnitSpec, best_disjoint
from activeseg.config import ConfigError, config_from_dict


def test_probabilities_match_hand_computed_weights() -> None:
    scores = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(sampling_probabilities(scores, 2.0, "power"), np.array([1, 4, 9]) / 14)
    np.testing.assert_allclose(sampling_probabilities(scores, 1.0, "softmax"), np.exp(scores) / np.exp(scores).sum())
    # ranks of (1, 2, 3) are (3, 2, 1): weights 1/3, 1/2, 1 -> (2, 3, 6) / 11
    np.testing.assert_allclose(sampling_probabilities(scores, 1.0, "softrank"), np.array([2, 3, 6]) / 11)


@pytest.mark.parametrize("kind", WEIGHTINGS)
def test_first_draw_frequencies_follow_the_probabilities(kind: str) -> None:
    scores = np.array([0.1, 0.4, 0.2, 0.8, 0.5])
    expected = sampling_probabilities(scores, 2.0, kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.bincount([stochastic_batch(scores, 1, 2.0, kind, rng)[0] for _ in range(draws)], minlength=5)  # type: ignore[arg-type]
    # 5 standard errors of a binomial proportion: fails on a wrong distribution, not on noise
    tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= tolerance), (counts / draws, expected)


@pytest.mark.parametrize("kind", WEIGHTINGS)
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


def test_clasp_quotas_split_two_thirds_over_foreground_classes() -> None:
    assert clasp_quotas(5, 2) == [2, 1, 2]  # round(3.3) = 3 foreground units
    assert clasp_quotas(10, 2) == [4, 3, 3]
    assert clasp_quotas(3, 3) == [1, 1, 0, 1]
    assert clasp_quotas(1, 2) == [1, 0, 0]


def test_clasp_maps_are_pe_then_class_specific_pe() -> None:
    probs = torch.softmax(torch.randn(4, 3, 2, 3, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    moments = Moments.of(probs)
    maps = strategy_maps("clasp", moments)
    assert maps.shape == (3, 2, 3, 2)
    torch.testing.assert_close(maps[0], predictive_entropy(moments))
    torch.testing.assert_close(maps[1:], predictive_entropy(moments) * probs.mean(dim=0)[1:])


def test_clasp_with_vanishing_noise_fills_each_class_share_then_pe() -> None:
    # columns: (PE, class-1 score, class-2 score); k = 5 -> 2 by class 1, 1 by class 2, 2 by PE
    scores = {
        "a": (0.1, 0.9, 0.0), "b": (0.2, 0.8, 0.0), "c": (0.3, 0.7, 0.0),
        "d": (0.4, 0.0, 0.9), "e": (0.5, 0.0, 0.8),
        "f": (0.9, 0.1, 0.1), "g": (0.8, 0.1, 0.1), "h": (0.05, 0.05, 0.05),
    }  # fmt: skip
    chosen = get_strategy("clasp-pe").select(
        list(scores), scores, 5, SelectionContext(np.random.default_rng(0), beta=1e4)
    )
    assert [c.unit for c in chosen] == ["a", "b", "d", "f", "g"]
    assert [c.score for c in chosen] == [0.9, 0.8, 0.9, 0.9, 0.8]


def test_beta_schedules() -> None:
    assert scheduled_beta("constant", 2.0, None, 3, 5) == 2.0
    assert scheduled_beta("exponential", 1.0, 100.0, 0, 5) == pytest.approx(1.0)
    assert scheduled_beta("exponential", 1.0, 100.0, 2, 5) == pytest.approx(10.0)  # geometric midpoint
    assert scheduled_beta("exponential", 1.0, 100.0, 4, 5) == pytest.approx(100.0)
    sigmoid = [scheduled_beta("sigmoid", 1.0, 9.0, r, 7) for r in range(7)]
    assert sigmoid[0] == pytest.approx(1.0) and sigmoid[-1] == pytest.approx(9.0)
    assert sigmoid[3] == pytest.approx(5.0)  # the middle round is half-way
    assert all(a < b for a, b in itertools.pairwise(sigmoid))
    config = config_from_dict({"strategy": {"beta": 1.0, "beta_end": 8.0, "beta_schedule": "exponential"}})
    assert config.strategy.beta_at(1, 4) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="beta_end: is needed by beta_schedule=sigmoid"):
        config_from_dict({"strategy": {"beta_schedule": "sigmoid"}})


def test_power_sampling_never_draws_a_zero_score_before_a_positive_one() -> None:
    scores = np.array([0.0, 0.5, 0.0, 1.0, 0.2, 0.0, 0.05])
    positive = {1, 3, 4, 6}
    for seed in range(300):
        for beta in (0.05, 0.1, 1.0):
            drawn = stochastic_batch(scores, 6, beta, "power", np.random.default_rng(seed))
            assert set(drawn[:4]) == positive  # every positive score first, whatever the noise
            assert set(drawn[4:]) <= {0, 2, 5}
    probabilities = sampling_probabilities(scores, 0.1, "power")
    assert probabilities[[0, 2, 5]].sum() == 0.0
    np.testing.assert_allclose(
        probabilities[[1, 3, 4, 6]], scores[[1, 3, 4, 6]] ** 0.1 / (scores[scores > 0] ** 0.1).sum()
    )


def test_power_sampling_of_all_zero_scores_is_uniform_and_seeded() -> None:
    zeros = np.zeros(6)
    np.testing.assert_allclose(sampling_probabilities(zeros, 0.5, "power"), np.full(6, 1 / 6))
    first = [int(stochastic_batch(zeros, 1, 0.5, "power", np.random.default_rng(seed))[0]) for seed in range(600)]
    assert set(first) == set(range(6)) and max(np.bincount(first)) < 150  # about 100 each
    again = [int(stochastic_batch(zeros, 1, 0.5, "power", np.random.default_rng(seed))[0]) for seed in range(600)]
    assert first == again


def _patch(case: str, z: int) -> str:
    return f"{case}@patch:{z}-{z + 4}:0-4:0-4"


def test_spread_takes_one_unit_per_case_before_a_second_from_any() -> None:
    # Case a holds the four best patches, b the next two, c one: top-k would take a's four.
    values = {("a", 0): 0.9, ("a", 4): 0.8, ("a", 8): 0.7, ("a", 12): 0.6, ("b", 0): 0.5, ("b", 4): 0.4, ("c", 0): 0.1}
    scores = {_patch(case, z): (v,) for (case, z), v in values.items()}
    candidates = sorted(scores)
    context = SelectionContext(rng=np.random.default_rng(0))
    assert [c.unit for c in select_top_k(candidates, scores, 3, context)] == [_patch("a", z) for z in (0, 4, 8)]
    spread = spread_selector(select_top_k)
    chosen = [c.unit for c in spread(candidates, scores, 5, context)]
    # Round one: the best of each case (a, b, c); then the cap rises and the next best of a and b follow.
    assert chosen == [_patch("a", 0), _patch("b", 0), _patch("c", 0), _patch("a", 4), _patch("b", 4)]
    assert [c.rank for c in spread(candidates, scores, 5, context)] == list(range(5))
    assert len(spread(candidates, scores, 7, context)) == 7  # every candidate, once
    volumes = {"x": (0.3,), "y": (0.9,), "z": (0.5,)}  # one unit per case: exactly the base selector's batch
    assert [c.unit for c in spread(sorted(volumes), volumes, 2, context)] == ["y", "z"]


def test_spread_clasp_pe_is_deterministic_given_the_generator_and_spreads_over_cases() -> None:
    rng = np.random.default_rng(3)
    keys = [_patch(f"case_{i}", z) for i in range(6) for z in (0, 4, 8, 12)]
    scores = {k: tuple(float(v) for v in rng.uniform(0.01, 1.0, 3)) for k in keys}
    strategy = get_strategy("spread-clasp-pe")
    runs = [
        [c.unit for c in strategy.select(keys, scores, 6, SelectionContext(rng=np.random.default_rng(7), beta=1.0))]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert sorted(k.partition("@")[0] for k in runs[0]) == [f"case_{i}" for i in range(6)]


def test_expected_cost_is_the_foreground_voxel_cost_expected_under_the_mean_prediction() -> None:
    """Summed over a unit, the cost map equals the ``foreground_voxels`` cost averaged over every labelling of the
    unit, each weighted by its probability under p̄ (exact enumeration: 3 voxels, 3 classes, 27 labellings)."""
    probs = torch.softmax(torch.randn(4, 3, 1, 1, 3, generator=torch.Generator().manual_seed(2)) * 2, dim=1)
    mean_C_V = probs.double().mean(dim=0).reshape(3, 3).numpy()
    expected = 0.0
    for labels in itertools.product(range(3), repeat=3):
        label = np.array(labels, dtype=np.uint8).reshape(1, 1, 3)
        chance = float(np.prod([mean_C_V[c, v] for v, c in enumerate(labels)]))
        expected += chance * COSTS["foreground_voxels"](CostContext(Unit("a"), (1, 1, 3), label_D_H_W=label))
    assert float(expected_cost(Moments.of(probs)).double().sum()) == pytest.approx(expected, abs=1e-5)


def test_cost_clasp_pe_prefers_the_cheaper_of_two_uncertain_units_where_clasp_pe_takes_the_costly_one() -> None:
    """Each unit has one uncertain voxel and three confident ones. The costly unit's uncertain voxel is more
    uncertain (p̄₁ = 0.5 against 0.3), but its confident voxels are foreground, three times as costly to draw."""
    foreground_V = {"costly": [0.5, 1 - 1e-6, 1 - 1e-6, 1 - 1e-6], "cheap": [0.3, 1e-6, 1e-6, 1e-6]}

    def vector(scorer: str, p1: list[float]) -> tuple[float, ...]:
        probs_1_C_1_1_V = torch.tensor([[1 - q for q in p1], p1]).reshape(1, 2, 1, 1, 4)
        moments = Moments.of(probs_1_C_1_1_V.repeat(2, 1, 1, 1, 1))
        return tuple(float(m.double().mean()) for m in strategy_maps(scorer, moments))

    for name, scorer, winner in (("clasp-pe", "clasp", "costly"), ("cost-clasp-pe", "clasp_cost", "cheap")):
        strategy = get_strategy(name)
        scores = {unit: vector(scorer, p1) for unit, p1 in foreground_V.items()}
        (choice,) = strategy.select(list(scores), scores, 1, SelectionContext(np.random.default_rng(0), beta=1e4))
        assert choice.unit == winner, name
    pe = {"costly": np.log(2.0), "cheap": -(0.3 * np.log(0.3) + 0.7 * np.log(0.7))}
    cost = {"costly": (2.0 + 3 * 3.0) / 4, "cheap": (1.6 + 3 * 1.0) / 4}  # 1 + 2 p̄₁ per voxel
    assert choice.score == pytest.approx(pe["cheap"] * 0.3 / 4 / cost["cheap"], rel=1e-4)
    assert pe["cheap"] * 0.3 / 4 / cost["cheap"] > pe["costly"] * 0.5 / 4 / cost["costly"]  # 0.040 against 0.032


def test_information_per_cost_divides_by_the_last_entry_and_rejects_a_vector_without_a_positive_cost() -> None:
    assert information_per_cost((0.6, 0.3, 2.0)).tolist() == [0.3, 0.15]
    assert information_per_cost([[0.6, 0.3, 2.0], [1.0, 0.5, 4.0]]).tolist() == [[0.3, 0.15], [0.25, 0.125]]
    for bad in ((0.5,), (0.5, 0.0), (0.5, -1.0), (0.5, float("nan")), [[0.5, 1.0], [0.5, 0.0]]):
        with pytest.raises(ValueError, match="positive cost"):
            information_per_cost(bad)


def test_overlapping_patches_are_kept_by_the_strategys_own_priority() -> None:
    """Non-maximum suppression keeps one of two overlapping patches: ClaSP PE the more uncertain, cost-aware ClaSP
    PE the one that is more uncertain per expected cost (columns: PE, PE·p̄₁, expected cost)."""
    spec = UnitSpec("patch", patch_size=(2, 2, 2), stride=(1, 2, 2))
    lattice = spec.lattice("a", (3, 2, 2))  # two patches sharing the middle slice
    score_U_M = np.array([[0.40, 0.30, 2.5], [0.30, 0.20, 1.2]])
    nothing_labelled = np.zeros((3, 2, 2), dtype=bool)
    for name, winner in (("clasp-pe", 0), ("cost-clasp-pe", 1)):
        strategy = get_strategy(name)
        columns = score_U_M if strategy.per_expected_cost else score_U_M[:, :2]
        assert best_disjoint(lattice, strategy.priority(columns), nothing_labelled, keep=None) == [winner], name


def test_a_cost_aware_strategy_rejects_the_top_q_reduction() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.reduction: top_q cannot price a unit"):
        config_from_dict({"strategy": {"name": "cost-clasp-pe", "reduction": "top_q"}})
    assert config_from_dict({"strategy": {"name": "cost-clasp-pe", "reduction": "sum"}}).strategy.reduction == "sum"
