"""The acquisition-strategy registry.

A strategy is one registered object: an optional voxel scorer (``None`` means it needs no model predictions) and a
selector that turns per-unit scores into a batch. The loop never special-cases a strategy: it asks
``strategy.needs_scores``, scores the pool if so, and calls ``strategy.select``.

Selection is deterministic given its inputs: ``select`` receives a numpy ``Generator`` that the loop seeded (and
recorded) before the call, and ties in score are broken by case id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from activeseg.scorers import VoxelScorer, bald, margin, predictive_entropy, variance
from activeseg.selection import Kind, stochastic_batch


@dataclass(frozen=True)
class Choice:
    """One selected unit: its case id, the score it was chosen on (None for score-free strategies) and its rank."""

    case_id: str
    score: float | None
    rank: int


@dataclass(frozen=True)
class SelectionParams:
    """Tunable selection parameters (from the run config's ``strategy`` section)."""

    beta: float = 1.0
    """Sharpness of stochastic batch acquisition: 0 is uniform, large is top-k."""


Selector = Callable[
    [Sequence[str], Mapping[str, float] | None, int, np.random.Generator, SelectionParams], list[Choice]
]
"""(sorted candidate ids, scores or None, batch size, rng, params) -> choices in rank order"""


@dataclass(frozen=True)
class Strategy:
    """A named acquisition strategy."""

    name: str
    description: str
    source: str
    scorer: VoxelScorer | None
    selector: Selector

    @property
    def needs_scores(self) -> bool:
        """Whether the pool must be scored with the model before selecting."""
        return self.scorer is not None

    def select(
        self,
        candidates: Sequence[str],
        scores: Mapping[str, float] | None,
        batch_size: int,
        rng: np.random.Generator,
        params: SelectionParams | None = None,
    ) -> list[Choice]:
        """Choose ``min(batch_size, len(candidates))`` distinct candidates."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidate ids must be unique")
        if self.needs_scores:
            missing = [c for c in candidates if scores is None or c not in scores]
            if missing:
                raise ValueError(f"strategy {self.name!r} needs a score for every candidate; missing {missing[:5]}")
        params = params or SelectionParams()
        return self.selector(sorted(candidates), scores, min(batch_size, len(candidates)), rng, params)


def select_random(
    candidates: Sequence[str],
    scores: Mapping[str, float] | None,
    k: int,
    rng: np.random.Generator,
    params: SelectionParams,
) -> list[Choice]:
    """Uniform sample without replacement."""
    del scores, params
    picked = rng.choice(len(candidates), size=k, replace=False)
    return [Choice(candidates[int(i)], None, rank) for rank, i in enumerate(picked)]


def select_top_k(
    candidates: Sequence[str],
    scores: Mapping[str, float] | None,
    k: int,
    rng: np.random.Generator,
    params: SelectionParams,
) -> list[Choice]:
    """The k highest scores; equal scores go to the smaller case id."""
    del rng, params
    assert scores is not None
    ranked = sorted(candidates, key=lambda c: (-scores[c], c))
    return [Choice(c, scores[c], rank) for rank, c in enumerate(ranked[:k])]


def stochastic_selector(kind: Kind) -> Selector:
    """A selector that samples the batch ∝ power / softmax / softrank weights of the scores (see ``selection``)."""

    def select(
        candidates: Sequence[str],
        scores: Mapping[str, float] | None,
        k: int,
        rng: np.random.Generator,
        params: SelectionParams,
    ) -> list[Choice]:
        assert scores is not None
        values = np.array([scores[c] for c in candidates])
        picked = stochastic_batch(values, k, params.beta, kind, rng)
        return [Choice(candidates[int(i)], scores[candidates[int(i)]], rank) for rank, i in enumerate(picked)]

    select.__doc__ = f"Stochastic batch acquisition with {kind} weights (Kirsch et al., TMLR 2023)."
    return select


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry (names are unique)."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; registered: {', '.join(sorted(STRATEGIES))}") from None


register(
    Strategy(
        name="random",
        description="Uniform random volumes: the baseline every method must beat.",
        source="Standard baseline (e.g. nnActive, Lüth et al., TMLR 2025).",
        scorer=None,
        selector=select_random,
    )
)
register(
    Strategy(
        name="entropy",
        description="Top-k predictive entropy of the MC-dropout mean, reduced per volume.",
        source="Shannon 1948; with MC dropout as in Gal et al., ICML 2017. With reduction=mean this is "
        "MONAI Label's 'epistemic' score, but selected as a top-k batch instead of one volume.",
        scorer=predictive_entropy,
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="bald",
        description="Top-k BALD (mutual information, PE - EE) under MC dropout, reduced per volume.",
        source="Houlsby et al. 2011; Gal, Islam & Ghahramani, ICML 2017. Top-k, not BatchBALD's joint selection.",
        scorer=bald,
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="epistemic",
        description="MONAI Label's 'epistemic': predictive entropy of the MC-dropout mean (use reduction=mean), top-k.",
        source="MONAI Label (Project-MONAI), EpistemicScoring. MONAI Label hands out one volume at a time; here the "
        "batch is the top-k of the same score, computed from seeded, batched MC passes.",
        scorer=predictive_entropy,
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="variance",
        description="Top-k class-averaged variance of the MC-dropout samples, reduced per volume.",
        source="Baal 'Variance' heuristic (baal-org); Gal et al., ICML 2017 (MC dropout).",
        scorer=variance,
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="margin",
        description="Top-k margin uncertainty 1 - (p1 - p2) of the MC-dropout mean, reduced per volume.",
        source="Scheffer et al., IDA 2001 (margin sampling); Baal 'Margin' heuristic.",
        scorer=margin,
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="power-bald",
        description="PowerBALD: batch sampled without replacement with probability ∝ BALD^β (strategy.beta).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023; scores reduced per volume first.",
        scorer=bald,
        selector=stochastic_selector("power"),
    )
)
register(
    Strategy(
        name="power-entropy",
        description="PowerPE: batch sampled without replacement with probability ∝ PE^β (strategy.beta).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023; scores reduced per volume first.",
        scorer=predictive_entropy,
        selector=stochastic_selector("power"),
    )
)
register(
    Strategy(
        name="softmax-bald",
        description="Batch sampled without replacement with probability ∝ exp(β · BALD).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023 (softmax acquisition).",
        scorer=bald,
        selector=stochastic_selector("softmax"),
    )
)
register(
    Strategy(
        name="softrank-bald",
        description="Batch sampled without replacement with probability ∝ rank(BALD)^-β.",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023 (soft-rank acquisition).",
        scorer=bald,
        selector=stochastic_selector("softrank"),
    )
)
