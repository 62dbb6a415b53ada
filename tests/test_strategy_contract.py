"""One contract, applied to every registered strategy (a new registration is covered automatically)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from activeseg.acquisition.moments import Moments
from activeseg.acquisition.registry import STRATEGIES, Strategy, get_strategy, register
from activeseg.acquisition.scorers import SKETCHES, gather_sites, reduce_mean, strategy_maps
from activeseg.acquisition.selectors import BATCHBALD_SITES, SelectionContext

ALL = sorted(STRATEGIES)


Scores = dict[str, tuple[float, ...]]


def score_vectors(strategy: Strategy, probs: list[torch.Tensor]) -> list[tuple[float, ...]]:
    """What the loop would give the strategy: its own voxel maps on these predictions, mean-reduced."""
    if strategy.scorer is None:
        return [(0.0,)] * len(probs)
    moments = [Moments.of(p) for p in probs]
    return [tuple(reduce_mean(s, m.mean_probs_C_D_H_W) for s in strategy_maps(strategy.scorer, m)) for m in moments]


def pool(n: int, strategy: Strategy | None = None, seed: int = 0, equal: bool = False) -> tuple[list[str], Scores]:
    """n candidate ids with score vectors computed from random MC predictions (K=3, C=3, 2x3x2 voxels)."""
    ids = [f"case_{i:03d}" for i in range(n)]
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(3, 3, 2, 3, 2, generator=generator) * 2 for _ in range(1 if equal else n)]
    probs = [torch.softmax(x, dim=1) for x in logits] * (n if equal else 1)
    vectors = score_vectors(strategy or get_strategy("bald"), probs)
    return ids, dict(zip(ids, vectors, strict=True))


def features(strategy: Strategy, ids: list[str], equal: bool = False) -> dict[str, Any]:
    """Embeddings (candidates and 3 labelled cases) or true foreground fractions, for strategies that need them."""
    if strategy.simulation_only:
        fraction = {c: 0.5 if equal else (int(c.split("_")[1]) % 7) / 10 + 0.05 for c in ids}
        return {"true_foreground": fraction, "true_border": {c: v / 3 for c, v in fraction.items()}}
    if strategy.sketch is not None:

        def probs(case_id: str) -> torch.Tensor:
            seed = 0 if equal else int(case_id.split("_")[1])
            return torch.softmax(torch.randn(3, 3, 2, 3, 2, generator=torch.Generator().manual_seed(seed)) * 2, dim=1)

        def sketch(case_id: str) -> np.ndarray:
            p = probs(case_id)
            assert strategy.sketch is not None
            sites_V_3 = SKETCHES[strategy.sketch](Moments.of(p), (slice(None),) * 3, BATCHBALD_SITES)
            return gather_sites(p, sites_V_3).numpy()

        return {"sketches": {c: sketch(c) for c in ids}}
    if strategy.embedding is None:
        return {}

    def vector(case_id: str) -> np.ndarray:  # a function of the id alone, whatever the candidates' order
        return np.ones(4) if equal else np.random.default_rng(int(case_id.split("_")[1])).normal(size=4)

    labelled = np.random.default_rng(99).normal(size=(3, 4))
    return {"embeddings": {c: vector(c) for c in ids}, "labelled_embeddings_M_F": labelled}


def select(strategy: Strategy, ids: list[str], scores: Scores, k: int, seed: int = 0, equal: bool = False) -> list[str]:
    given = scores if strategy.needs_scores else None
    chosen = strategy.select(
        ids, given, k, SelectionContext(np.random.default_rng(seed), **features(strategy, ids, equal))
    )
    return [c.unit for c in chosen]


@pytest.fixture(params=ALL)
def strategy(request: pytest.FixtureRequest) -> Strategy:
    return get_strategy(request.param)


def test_documented(strategy: Strategy) -> None:
    assert strategy.description.strip() and strategy.source.strip()


def test_rejects_bad_parameters(strategy: Strategy) -> None:
    ids, scores = pool(10, strategy)
    with pytest.raises(ValueError, match="batch_size"):
        strategy.select(ids, scores, 0, SelectionContext(np.random.default_rng(0), **features(strategy, ids)))
    with pytest.raises(ValueError, match="unique"):
        strategy.select(
            [*ids, ids[0]], scores, 2, SelectionContext(np.random.default_rng(0), **features(strategy, ids))
        )
    if strategy.needs_scores:
        with pytest.raises(ValueError, match="needs a score"):
            strategy.select(
                ids,
                {c: scores[c] for c in ids[:5]},
                2,
                SelectionContext(np.random.default_rng(0), **features(strategy, ids)),
            )
    if strategy.simulation_only:
        with pytest.raises(ValueError, match="simulation-only"):
            strategy.select(ids, None, 2, SelectionContext(np.random.default_rng(0)))
    if strategy.sketch is not None:
        with pytest.raises(ValueError, match="sketch"):
            strategy.select(ids, scores, 2, SelectionContext(np.random.default_rng(0)))
    if strategy.embedding is not None:
        with pytest.raises(ValueError, match="embeddings"):
            strategy.select(
                ids, scores if strategy.needs_scores else None, 2, SelectionContext(np.random.default_rng(0))
            )


def test_same_seed_same_selection_and_order_free(strategy: Strategy) -> None:
    ids, scores = pool(30, strategy)
    first = select(strategy, ids, scores, 5, seed=3)
    assert select(strategy, ids, scores, 5, seed=3) == first
    assert select(strategy, list(reversed(ids)), scores, 5, seed=3) == first


def test_budget_respected_and_only_candidates_without_duplicates(strategy: Strategy) -> None:
    ids, scores = pool(30, strategy)
    labelled = set(ids[::3])
    candidates = [c for c in ids if c not in labelled]
    for k in (1, 4, 7):
        chosen = select(strategy, candidates, scores, k)
        assert len(chosen) == k
        assert len(set(chosen)) == k
        assert not set(chosen) & labelled
        assert set(chosen) <= set(candidates)


def test_pool_smaller_than_budget(strategy: Strategy) -> None:
    ids, scores = pool(3, strategy)
    assert sorted(select(strategy, ids, scores, 10)) == ids


def test_all_scores_equal(strategy: Strategy) -> None:
    ids, flat = pool(12, strategy, equal=True)
    assert len(set(flat.values())) == 1
    chosen = select(strategy, ids, flat, 4, equal=True)
    assert len(set(chosen)) == 4
    assert chosen == select(strategy, ids, flat, 4, equal=True)


def test_rank_and_score_recorded(strategy: Strategy) -> None:
    ids, scores = pool(20, strategy)
    given = scores if strategy.needs_scores else None
    chosen = strategy.select(ids, given, 5, SelectionContext(np.random.default_rng(0), **features(strategy, ids)))
    assert [c.rank for c in chosen] == list(range(5))
    for c in chosen:
        assert (c.score in strategy.ranked(scores[c.unit])) if strategy.needs_scores else (c.score is None)


def test_top_k_strategies_pick_the_highest_scores() -> None:
    ids, scores = pool(40)
    best = sorted(ids, key=lambda c: -scores[c][0])[:6]
    for name in ("entropy", "bald", "epistemic", "variance", "margin"):
        assert select(get_strategy(name), ids, scores, 6) == best


def test_registry_rejects_duplicates_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(STRATEGIES["random"])
    with pytest.raises(KeyError, match="registered: "):
        get_strategy("nope")


def test_foreground_random_mixes_anywhere_foreground_and_border_as_nnactive() -> None:
    ids = [f"case_{i:03d}" for i in range(2)]
    strategy = get_strategy("foreground-random")
    foreground, border = {ids[0]: 0.01, ids[1]: 0.03}, {ids[0]: 0.02, ids[1]: 0.0}
    picks = [
        strategy.select(
            ids, None, 1, SelectionContext(np.random.default_rng(i), true_foreground=foreground, true_border=border)
        )[0]
        for i in range(6000)
    ]
    share = sum(p.unit == ids[1] for p in picks) / len(picks)
    expected = 4 / 6 * 0.5 + 1 / 6 * 0.75 + 1 / 6 * 0.0  # anywhere, ∝ foreground, ∝ border
    assert abs(share - expected) < 5 * np.sqrt(expected * (1 - expected) / 6000)


def test_strided_takes_evenly_spaced_slices_of_random_volumes() -> None:
    ids = sorted(f"{case}@slice:0:{i}" for case in ("a", "b", "c") for i in range(40))
    chosen = [c.unit for c in get_strategy("strided").select(ids, None, 6, SelectionContext(np.random.default_rng(0)))]
    first, second = chosen[:4], chosen[4:]
    assert len({c.split("@")[0] for c in first}) == 1 and len({c.split("@")[0] for c in second}) == 1
    assert [int(c.rsplit(":", 1)[1]) for c in first] == [5, 15, 25, 35]  # 4 evenly spaced of 40
    assert [int(c.rsplit(":", 1)[1]) for c in second] == [10, 30]  # the budget's last 2, evenly spaced
