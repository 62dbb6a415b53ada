"""The acquisition-strategy registry.

A strategy is one registered object: an optional voxel scorer (``None`` means it needs no model predictions), a
selector that turns per-unit scores into a batch, and its documentation. The loop never special-cases a strategy:
it asks ``strategy.needs_scores``, scores the pool if so, and calls ``strategy.select``.

A scorer returns one voxel map (``score_D_H_W``) or a stack of them (``score_M_D_H_W``, e.g. plain PE followed by
one class-specific map per foreground class). Each map is reduced to one number, so every unit carries a score
vector; its first entry is the unit's score.

Selection is deterministic given its inputs: ``select`` receives a numpy ``Generator`` that the loop seeded (and
recorded) before the call, and ties in score are broken by case id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from activeseg.batchbald import greedy_batchbald, site_sketch
from activeseg.diversity import k_center_greedy, kmeans_pp_seeding, kmeans_top_per_cluster
from activeseg.embeddings import Embedding
from activeseg.scorers import (
    VoxelScorer,
    as_map_stack,
    bald,
    class_predictive_entropy,
    margin,
    predictive_entropy,
    variance,
)
from activeseg.selection import Kind, stochastic_batch

ScoreVector = tuple[float, ...]
"""(unit score, *extra scores), e.g. (PE, PE·p̄_1, PE·p̄_2) for ClaSP PE"""


@dataclass(frozen=True)
class Choice:
    """One selected unit: its case id, the score it was chosen on (None for score-free strategies) and its rank."""

    case_id: str
    score: float | None
    rank: int


@dataclass(frozen=True)
class SelectionContext:
    """What a selector may use besides the scores: the seeded generator, β for this round, the round index, and
    (for diversity strategies) feature vectors of the candidates and of the labelled set."""

    rng: np.random.Generator
    beta: float = 1.0
    round_index: int = 0
    embeddings: Mapping[str, np.ndarray] | None = None
    labelled_embeddings_M_F: np.ndarray | None = None
    true_foreground: Mapping[str, float] | None = None
    """Simulation only: each candidate's true foreground fraction (foreground-aware baselines)."""
    sketches: Mapping[str, np.ndarray] | None = None
    """Per-candidate summaries of the K samples (``Strategy.sketch``), for joint selection."""


Selector = Callable[[Sequence[str], Mapping[str, ScoreVector] | None, int, SelectionContext], list[Choice]]
"""(sorted candidate ids, score vectors or None, batch size, context) -> choices in rank order"""


@dataclass(frozen=True)
class Strategy:
    """A named acquisition strategy."""

    name: str
    description: str
    source: str
    scorer: VoxelScorer | None
    selector: Selector
    embedding: Embedding | None = None
    """Feature vectors the selector needs (``bottleneck`` or ``gradient``), or None."""
    simulation_only: bool = False
    """Needs ground truth of unlabelled cases: a benchmark baseline, never usable with a human annotator."""
    sketch: Callable[[Tensor], np.ndarray] | None = None
    """Summarises a unit's probs_K_C_D_H_W for the selector (computed in the same scoring pass), or None."""

    @property
    def needs_scores(self) -> bool:
        """Whether the pool must be scored with the model before selecting."""
        return self.scorer is not None

    def score_maps(self, probs_K_C_D_H_W: Tensor) -> Tensor:
        """The strategy's voxel maps for one unit: score_M_D_H_W (M = 1 for single-map scorers)."""
        if self.scorer is None:
            raise ValueError(f"strategy {self.name!r} uses no scores")
        return as_map_stack(self.scorer(probs_K_C_D_H_W), probs_K_C_D_H_W)

    def select(
        self,
        candidates: Sequence[str],
        scores: Mapping[str, float | Sequence[float]] | None,
        batch_size: int,
        rng: np.random.Generator,
        *,
        beta: float = 1.0,
        round_index: int = 0,
        embeddings: Mapping[str, np.ndarray] | None = None,
        labelled_embeddings_M_F: np.ndarray | None = None,
        true_foreground: Mapping[str, float] | None = None,
        sketches: Mapping[str, np.ndarray] | None = None,
    ) -> list[Choice]:
        """Choose ``min(batch_size, len(candidates))`` distinct candidates."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidate ids must be unique")
        vectors = None
        if self.needs_scores:
            missing = [c for c in candidates if scores is None or c not in scores]
            if missing:
                raise ValueError(f"strategy {self.name!r} needs a score for every candidate; missing {missing[:5]}")
            assert scores is not None
            vectors = {c: tuple(float(v) for v in np.atleast_1d(scores[c])) for c in candidates}
        if self.embedding is not None:
            missing = [c for c in candidates if embeddings is None or c not in embeddings]
            if missing or labelled_embeddings_M_F is None:
                raise ValueError(
                    f"strategy {self.name!r} needs {self.embedding} embeddings of every candidate and of the "
                    f"labelled set; missing {missing[:5] or 'the labelled set'}"
                )
        if self.simulation_only and (true_foreground is None or any(c not in true_foreground for c in candidates)):
            raise ValueError(
                f"strategy {self.name!r} is simulation-only: it needs the true foreground of every candidate"
            )
        if self.sketch is not None and (sketches is None or any(c not in sketches for c in candidates)):
            raise ValueError(f"strategy {self.name!r} needs a sketch of every candidate")
        context = SelectionContext(
            rng, beta, round_index, embeddings, labelled_embeddings_M_F, true_foreground, sketches
        )
        return self.selector(sorted(candidates), vectors, min(batch_size, len(candidates)), context)


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


def stochastic_selector(kind: Kind) -> Selector:
    """A selector that samples the batch ∝ power / softmax / softrank weights of the scores (see ``selection``)."""

    def select(
        candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
    ) -> list[Choice]:
        assert scores is not None
        values = np.array([scores[c][0] for c in candidates])
        picked = stochastic_batch(values, k, context.beta, kind, context.rng)
        return [Choice(candidates[int(i)], scores[candidates[int(i)]][0], rank) for rank, i in enumerate(picked)]

    select.__doc__ = f"Stochastic batch acquisition with {kind} weights (Kirsch et al., TMLR 2023)."
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


def select_foreground_aware_random(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Random volumes drawn without replacement with probability ∝ their true foreground fraction."""
    del scores
    assert context.true_foreground is not None
    fractions = np.array([context.true_foreground[c] for c in candidates])
    picked = stochastic_batch(fractions, k, 1.0, "power", context.rng)
    return [Choice(candidates[int(i)], None, rank) for rank, i in enumerate(picked)]


BATCHBALD_SITES = 16
BATCHBALD_CONFIGURATIONS = 1000


def select_batchbald(
    candidates: Sequence[str], scores: Mapping[str, ScoreVector] | None, k: int, context: SelectionContext
) -> list[Choice]:
    """Greedy joint-MI selection over each candidate's most uncertain voxel sites (see ``batchbald``)."""
    assert scores is not None and context.sketches is not None
    picked, gains = greedy_batchbald(
        [context.sketches[c] for c in candidates], k, context.rng, configurations=BATCHBALD_CONFIGURATIONS
    )
    del gains
    return [Choice(candidates[i], scores[candidates[i]][0], rank) for rank, i in enumerate(picked)]


CLASP_FOREGROUND_SHARE = 0.66


def clasp_quotas(k: int, n_foreground: int, share: float = CLASP_FOREGROUND_SHARE) -> list[int]:
    """Units per foreground class (split evenly, remainder to the lower classes), then the plain-PE remainder."""
    foreground = round(share * k)
    per_class = [foreground // n_foreground + (1 if j < foreground % n_foreground else 0) for j in range(n_foreground)]
    return [*per_class, k - foreground]


def clasp_maps(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Plain PE followed by PE · p̄_c for each foreground class c: score_M_D_H_W with M = C."""
    class_maps_C_D_H_W = class_predictive_entropy(probs_K_C_D_H_W)
    return torch.cat([predictive_entropy(probs_K_C_D_H_W).unsqueeze(0), class_maps_C_D_H_W[1:]])


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
        name="clasp-pe",
        description="ClaSP PE: 66% of the batch split over foreground classes by PE·p̄_c, 34% by PE; power noising.",
        source="Lüth et al., 'ClaSP PE', TMLR 2026 (arXiv 2601.13677). Volumes as units here (the paper queries "
        "patches); β follows strategy.beta / beta_end / beta_schedule.",
        scorer=clasp_maps,
        selector=select_clasp,
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
register(
    Strategy(
        name="coreset",
        description="Core-set: greedy k-center on the U-Net's bottleneck features, covering the labelled set.",
        source="Sener & Savarese, ICLR 2018. Features are the spatially averaged bottleneck activations "
        "(the paper uses the penultimate layer of a classifier).",
        scorer=None,
        selector=select_coreset,
        embedding="bottleneck",
    )
)
register(
    Strategy(
        name="kmeans-bald",
        description="k-means BALD: cluster bottleneck features into k groups, take the top-BALD volume of each.",
        source="Cluster-then-top diversity (Zhdanov 2019, arXiv:1901.05954) with BALD (Gal et al., ICML 2017) "
        "as the score.",
        scorer=bald,
        selector=select_kmeans_top,
        embedding="bottleneck",
    )
)
register(
    Strategy(
        name="badge",
        description="BADGE: k-means++ seeding on last-layer gradient embeddings (pseudo-labels = the argmax).",
        source="Ash et al., ICLR 2020. For segmentation the per-voxel gradients of the last convolution are averaged "
        "over the volume; the last layer is a 3x3x3 convolution here, not a linear layer.",
        scorer=None,
        selector=select_badge,
        embedding="gradient",
    )
)
register(
    Strategy(
        name="foreground-random",
        description="SIMULATION ONLY: random volumes, drawn with probability ∝ their TRUE foreground fraction.",
        source="Foreground-aware random baseline of nnActive (Lüth et al., TMLR 2025), which draws patch centres "
        "from the true foreground/border; for whole volumes the preference becomes foreground-proportional "
        "sampling. It reads unlabelled ground truth, so it only exists in simulated benchmarks.",
        scorer=None,
        selector=select_foreground_aware_random,
        simulation_only=True,
    )
)
register(
    Strategy(
        name="batchbald",
        description="BatchBALD for volumes: greedy joint MI over each volume's 16 highest-BALD voxel sites.",
        source="Kirsch, van Amersfoort & Gal, NeurIPS 2019. Approximation (activeseg): a unit's outcome is its 16 "
        "most uncertain voxels, independent given the model; joint entropy by 1000 sampled configurations.",
        scorer=bald,
        selector=select_batchbald,
        sketch=lambda probs: site_sketch(probs, BATCHBALD_SITES),
    )
)
