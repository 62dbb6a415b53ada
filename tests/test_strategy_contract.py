"""One contract, applied to every registered strategy (a new registration is covered automatically)."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.strategies import STRATEGIES, Strategy, get_strategy, register

ALL = sorted(STRATEGIES)


def pool(n: int, seed: int = 0) -> tuple[list[str], dict[str, float]]:
    ids = [f"case_{i:03d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    return ids, {c: float(s) for c, s in zip(ids, rng.random(n), strict=True)}


def select(strategy: Strategy, ids: list[str], scores: dict[str, float], k: int, seed: int = 0) -> list[str]:
    chosen = strategy.select(ids, scores if strategy.needs_scores else None, k, np.random.default_rng(seed))
    return [c.case_id for c in chosen]


@pytest.fixture(params=ALL)
def strategy(request: pytest.FixtureRequest) -> Strategy:
    return get_strategy(request.param)


def test_documented(strategy: Strategy) -> None:
    assert strategy.description.strip() and strategy.source.strip()


def test_rejects_bad_parameters(strategy: Strategy) -> None:
    ids, scores = pool(10)
    with pytest.raises(ValueError, match="batch_size"):
        strategy.select(ids, scores, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unique"):
        strategy.select([*ids, ids[0]], scores, 2, np.random.default_rng(0))
    if strategy.needs_scores:
        with pytest.raises(ValueError, match="needs a score"):
            strategy.select(ids, {c: scores[c] for c in ids[:5]}, 2, np.random.default_rng(0))


def test_same_seed_same_selection_and_order_free(strategy: Strategy) -> None:
    ids, scores = pool(30)
    first = select(strategy, ids, scores, 5, seed=3)
    assert select(strategy, ids, scores, 5, seed=3) == first
    assert select(strategy, list(reversed(ids)), scores, 5, seed=3) == first


def test_budget_respected_and_only_candidates_without_duplicates(strategy: Strategy) -> None:
    ids, scores = pool(30)
    labelled = set(ids[::3])
    candidates = [c for c in ids if c not in labelled]
    for k in (1, 4, 7):
        chosen = select(strategy, candidates, scores, k)
        assert len(chosen) == k
        assert len(set(chosen)) == k
        assert not set(chosen) & labelled
        assert set(chosen) <= set(candidates)


def test_pool_smaller_than_budget(strategy: Strategy) -> None:
    ids, scores = pool(3)
    assert sorted(select(strategy, ids, scores, 10)) == ids


def test_all_scores_equal(strategy: Strategy) -> None:
    ids, _ = pool(12)
    flat = dict.fromkeys(ids, 0.5)
    chosen = select(strategy, ids, flat, 4)
    assert len(set(chosen)) == 4
    assert chosen == select(strategy, ids, flat, 4)


def test_rank_and_score_recorded(strategy: Strategy) -> None:
    ids, scores = pool(20)
    chosen = strategy.select(ids, scores if strategy.needs_scores else None, 5, np.random.default_rng(0))
    assert [c.rank for c in chosen] == list(range(5))
    for c in chosen:
        assert c.score == (scores[c.case_id] if strategy.needs_scores else None)


def test_top_k_strategies_pick_the_highest_scores() -> None:
    ids, scores = pool(40)
    best = sorted(ids, key=lambda c: -scores[c])[:6]
    for name in ("entropy", "bald", "epistemic", "variance", "margin"):
        assert select(get_strategy(name), ids, scores, 6) == best


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(STRATEGIES["random"])
    with pytest.raises(KeyError, match="registered: "):
        get_strategy("nope")
