"""Selectors: how a strategy turns candidate units (and their scores, features or sketches) into a batch.

Each selector gets the sorted candidate unit keys, each candidate's score vector (or None for score-free
strategies), the batch size and a :class:`SelectionContext`, and returns :class:`Choice` objects in rank order.
All randomness comes from ``context.rng``, which the loop seeded and recorded; ties go to the smaller key. Selectors
are numpy only: they never see a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from activeseg.acquisition.batchbald import greedy_batchbald, unit_outcomes
from activeseg.acquisition.diversity import k_center_greedy, kmeans_pp_seeding, kmeans_top_per_cluster
from activeseg.acquisition.stochastic import Weighting, stochastic_batch
from activeseg.acquisition.units import case_of, parse_key

BATCHBALD_SITES = 16
BATCHBALD_CONFIGURATIONS = 1000
"""Defaults of ``strategy.sketch_sites`` and ``strategy.joint_configurations``."""

ScoreVector = tuple[float, ...]
"""(unit score, *extra scores), e.g. (PE, PE·p̄_1, PE·p̄_2) for ClaSP PE"""


@dataclass(frozen=True)
class Choice:
    """One selected unit: its key (see ``units``), the score it was chosen on (None for score-free strategies) and
    its rank."""

    unit: str
    score: float | None
    rank: int


@dataclass(frozen=True)
class SelectionContext:
    """What a selector may use besides the scores: the seeded generator, β for this round, the round index, and
    whatever else the strategy declares it needs (see ``registry.Strategy.needs``); the loop fills in only that."""

    rng: np.random.Generator
    beta: float = 1.0
    round_index: int = 0
    embeddings: Mapping[str, np.ndarray] | None = None
    labelled_embeddings_M_F: np.ndarray | None = None
    true_foreground: Mapping[str, float] | None = None
    """Simulation only: each candidate's true foreground fraction (foreground-aware baselines)."""
    true_border: Mapping[str, float] | None = None
    """Simulation only: each candidate's fraction of true foreground-border voxels."""
    sketches: Mapping[str, np.ndarray] | None = None
    """Per-candidate summaries of the K samples (``Strategy.sketch``), for joint selection."""
    configurations: int = BATCHBALD_CONFIGURATIONS
    """Joint selection (BatchBALD): the batch's label configurations are enumerated while there are at most this
    many, else this many are sampled for the joint-entropy estimate."""


Selector = Callable[[Sequence[str], Mapping[str, ScoreVector] | None, int, SelectionContext], list[Choice]]
"""(sorted candidate unit keys, score vectors or None, batch size, context) -> choices in rank order"""


def select_random(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Uniform sample without replacement."""
    del scores
    picked = context.rng.choice(len(candidates), size=k, replace=False)
    return [Choice(candidates[int(i)], None, rank) for rank, i in enumerate(picked)]


def select_top_k(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """The k highest scores; equal scores go to the smaller case id."""
    del context
    assert scores is not None
    ranked = sorted(candidates, key=lambda c: (-scores[c][0], c))
    return [Choice(c, scores[c][0], rank) for rank, c in enumerate(ranked[:k])]


def stochastic_selector(weighting: Weighting) -> Selector:
    """A selector that samples the batch ∝ power / softmax / softrank weights of the scores (see ``stochastic``)."""

    def select(
        candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
    ) -> list[Choice]:
        assert scores is not None
        values = np.array([scores[c][0] for c in candidates])
        picked = stochastic_batch(values, k, context.beta, weighting, context.rng)
        return [Choice(candidates[int(i)], scores[candidates[int(i)]][0], rank) for rank, i in enumerate(picked)]

    select.__doc__ = f"Stochastic batch acquisition with {weighting} weights (Kirsch et al., TMLR 2023)."
    return select


def _embedding_matrix(candidates: Sequence[str], context: SelectionContext) -> np.ndarray:
    assert context.embeddings is not None
    return np.stack([context.embeddings[c] for c in candidates])


def select_coreset(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Greedy k-center on bottleneck embeddings, covering the labelled set first (Sener & Savarese, ICLR 2018)."""
    del scores
    assert context.labelled_embeddings_M_F is not None
    picked = k_center_greedy(_embedding_matrix(candidates, context), context.labelled_embeddings_M_F, k)
    return [Choice(candidates[int(i)], None, rank) for rank, i in enumerate(picked)]


def select_kmeans_top(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Cluster the candidates' embeddings into k groups; take the highest-scoring candidate of each."""
    assert scores is not None
    values = np.array([scores[c][0] for c in candidates])
    picked = kmeans_top_per_cluster(_embedding_matrix(candidates, context), values, k, context.rng)
    return [Choice(candidates[int(i)], float(values[i]), rank) for rank, i in enumerate(picked)]


def select_badge(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """k-means++ seeding on gradient embeddings (Ash et al., ICLR 2020)."""
    del scores
    picked = kmeans_pp_seeding(_embedding_matrix(candidates, context), k, context.rng)
    return [Choice(candidates[int(i)], None, rank) for rank, i in enumerate(picked)]


FOREGROUND_MIXTURE = (4 / 6, 1 / 6, 1 / 6)
"""nnActive's foreground-aware random: a pick is from anywhere, from the true foreground or from its border."""


def select_foreground_aware_random(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Each pick is uniform (4/6), ∝ the unit's true foreground (1/6) or ∝ its true border voxels (1/6), without
    replacement; picking a unit ∝ its foreground voxels is picking a random foreground voxel's unit."""
    del scores
    assert context.true_foreground is not None
    foreground = np.array([context.true_foreground[c] for c in candidates], dtype=np.float64)
    border = foreground if context.true_border is None else np.array([context.true_border[c] for c in candidates])
    remaining = np.ones(len(candidates), dtype=np.float64)
    picked = []
    for _ in range(k):
        source = int(context.rng.choice(3, p=FOREGROUND_MIXTURE))
        weights = (remaining, foreground, border)[source] * remaining
        if weights.sum() <= 0:  # no foreground (or border) left among the candidates: fall back to anywhere
            weights = remaining
        i = int(context.rng.choice(len(candidates), p=weights / weights.sum()))
        remaining[i] = 0.0
        picked.append(i)
    return [Choice(candidates[i], None, rank) for rank, i in enumerate(picked)]


STRIDED_PER_VOLUME = 4


def select_strided(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Volumes in random order; from each, ``STRIDED_PER_VOLUME`` evenly spaced slices among its candidates.

    Candidates that are not slices form one group each, so for whole volumes this is random sampling.
    """
    del scores
    groups: dict[str, list[tuple[int, str]]] = {}
    for key in candidates:
        parts = parse_key(key)
        case, index = (parts.case_id, parts.index) if parts.kind == "slice" else (key, 0)
        groups.setdefault(case, []).append((index, key))
    picked: list[str] = []
    for g in context.rng.permutation(len(groups)):
        members = sorted(groups[sorted(groups)[int(g)]])
        n = min(STRIDED_PER_VOLUME, k - len(picked), len(members))
        picked += [members[int((j + 0.5) * len(members) / n)][1] for j in range(n)]
        if len(picked) == k:
            break
    return [Choice(key, None, rank) for rank, key in enumerate(picked)]


def select_batchbald(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Greedy joint-MI selection; a candidate's outcome is the class of one of its sketch's sites (``batchbald``)."""
    assert scores is not None and context.sketches is not None
    outcomes_N_K_C = unit_outcomes([context.sketches[c] for c in candidates])
    picked, gains = greedy_batchbald(outcomes_N_K_C, k, context.rng, configurations=context.configurations)
    del gains
    return [Choice(candidates[i], scores[candidates[i]][0], rank) for rank, i in enumerate(picked)]


CLASP_FOREGROUND_SHARE = 0.66


def clasp_quotas(k: int, n_foreground: int, share: float = CLASP_FOREGROUND_SHARE) -> list[int]:
    """Units per foreground class (split evenly, remainder to the lower classes), then the plain-PE remainder."""
    foreground = round(share * k)
    per_class = [foreground // n_foreground + (1 if j < foreground % n_foreground else 0) for j in range(n_foreground)]
    return [*per_class, k - foreground]


def select_clasp(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """ClaSP PE: class-stratified shares by class-specific PE, the rest by PE, each with power noising (β)."""
    assert scores is not None
    n_foreground = len(scores[candidates[0]]) - 1
    if n_foreground < 1:
        raise ValueError("ClaSP PE needs class-specific scores (a scorer giving PE and one map per foreground class)")
    remaining = list(candidates)
    picked: list[tuple[str, float]] = []
    entries = [*range(1, n_foreground + 1), 0]  # each foreground class's column, then plain PE
    for column, quota in zip(entries, clasp_quotas(k, n_foreground), strict=True):
        if quota == 0 or not remaining:
            continue
        values = np.array([scores[c][column] for c in remaining])
        order = stochastic_batch(values, min(quota, len(remaining)), context.beta, "power", context.rng)
        chosen = [remaining[int(i)] for i in order]
        picked += [(c, scores[c][column]) for c in chosen]
        remaining = [c for c in remaining if c not in set(chosen)]
    return [Choice(c, score, rank) for rank, (c, score) in enumerate(picked)]


def spread_selector(base: Selector, per_case: int = 1) -> Selector:
    """``base`` with its batch spread over cases: no case gives more than ``per_case`` units until every case with
    candidates left has given that many (then the cap rises by ``per_case``).

    ``base`` chooses from the cases still under the cap; its choices are taken in rank order while their case is
    under the cap, the rest stay candidates, and ``base`` is asked again for what is missing. Whole volumes (one
    unit per case) are unaffected.
    """

    def select(
        candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
    ) -> list[Choice]:
        picked: list[Choice] = []
        taken: dict[str, int] = {}
        remaining = list(candidates)
        cap = per_case
        while len(picked) < k and remaining:
            open_cases = [c for c in remaining if taken.get(case_of(c), 0) < cap]
            if not open_cases:
                cap += per_case
                continue
            for choice in base(open_cases, scores, min(k - len(picked), len(open_cases)), context):
                case = case_of(choice.unit)
                if taken.get(case, 0) < cap:
                    taken[case] = taken.get(case, 0) + 1
                    picked.append(choice)
            chosen = {c.unit for c in picked}
            remaining = [c for c in remaining if c not in chosen]
        return [Choice(c.unit, c.score, rank) for rank, c in enumerate(picked)]

    select.__doc__ = f"{(base.__doc__ or '').strip()} Spread: at most {per_case} unit(s) per case while others remain."
    return select
