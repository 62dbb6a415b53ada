"""The acquisition-strategy registry: every strategy is one entry here.

A strategy is a name, a documented source and what it is made of:

- ``scorer``: the voxel scorer it ranks by, a name in ``scorers.SCORERS`` (None: it needs no model predictions).
  A scorer returns one voxel map or a stack of them (e.g. ClaSP PE: plain PE, then one class-specific map per
  foreground class); each map is reduced per unit, so every unit carries a score vector whose first entry is its
  score.
- ``selector``: a pure function (``selectors``) that turns candidate units and their scores into a batch.
- ``per_expected_cost``: the scorer's last map is the expected annotation cost, and the selector ranks every other
  score over it (:meth:`Strategy.ranked`).
- what else it needs, declared: an ``embedding`` of each volume, a ``sketch`` of each unit's K samples, or the true
  foreground of each unit (``simulation_only``). The loop computes exactly what :attr:`Strategy.needs` lists and
  hands it over in one :class:`~activeseg.acquisition.selectors.SelectionContext`; it never special-cases a name.

This module imports no torch (the config validates strategy names against it when a YAML file is loaded); scorers
and sketches are named here and resolved on the torch side (``scorers.SCORERS``, ``scorers.SKETCHES``). Selection
is deterministic given its inputs: ``select`` receives a numpy ``Generator`` that the loop seeded (and recorded)
before the call, and ties are broken by unit key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from activeseg.acquisition.costs import FOREGROUND_WEIGHT, information_per_cost
from activeseg.acquisition.selectors import (
    Choice,
    ScoreVector,
    SelectionContext,
    Selector,
    select_badge,
    select_batchbald,
    select_clasp,
    select_coreset,
    select_foreground_aware_random,
    select_kmeans_top,
    select_random,
    select_strided,
    select_top_k,
    spread_selector,
    stochastic_selector,
)

Embedding = Literal["bottleneck", "gradient"]
Need = Literal["scores", "embeddings", "sketches", "true_fractions"]


@dataclass(frozen=True)
class Strategy:
    """A named acquisition strategy."""

    name: str
    description: str
    source: str
    selector: Selector
    scorer: str | None = None
    """The voxel scorer it ranks by (a name in ``scorers.SCORERS``), or None for a score-free strategy."""
    embedding: Embedding | None = None
    """Feature vectors of every volume the selector needs (``bottleneck`` or ``gradient``), or None."""
    sketch: str | None = None
    """A summary of each unit's K samples, computed in the scoring pass (a name in ``scorers.SKETCHES``), or None."""
    simulation_only: bool = False
    """Needs the ground truth of unlabelled units: a benchmark baseline, never usable with a human annotator."""
    per_expected_cost: bool = False
    """The scorer's last map is each voxel's expected annotation cost; the selector ranks expected information per
    unit of cost (``costs.information_per_cost``)."""

    @property
    def needs_scores(self) -> bool:
        """Whether the pool must be scored with the model before selecting."""
        return self.scorer is not None

    @property
    def needs(self) -> frozenset[Need]:
        """Everything the loop must compute for this strategy besides the candidates."""
        wanted: list[Need] = []
        if self.scorer is not None:
            wanted.append("scores")
        if self.embedding is not None:
            wanted.append("embeddings")
        if self.sketch is not None:
            wanted.append("sketches")
        if self.simulation_only:
            wanted.append("true_fractions")
        return frozenset(wanted)

    def ranked(self, vector: ScoreVector) -> ScoreVector:
        """The score vector the selector ranks a unit by: its own, or each score over its expected cost."""
        return tuple(float(v) for v in information_per_cost(vector)) if self.per_expected_cost else vector

    def priority(self, score_U_M: np.ndarray) -> np.ndarray:
        """The first ranked score of each of a volume's units (priority_U): the order in which non-maximum
        suppression keeps overlapping units, so a cost-aware strategy keeps the best unit per unit of cost."""
        return (information_per_cost(score_U_M) if self.per_expected_cost else np.asarray(score_U_M))[:, 0]

    def select(
        self,
        candidates: Sequence[str],
        scores: Mapping[str, float | Sequence[float]] | None,
        batch_size: int,
        context: SelectionContext,
    ) -> list[Choice]:
        """Choose ``min(batch_size, len(candidates))`` distinct candidate units, after checking that the context
        holds everything the strategy needs for every candidate."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if context.configurations < 1:
            raise ValueError(f"configurations must be at least 1, got {context.configurations}")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidate unit keys must be unique")
        vectors = None
        if self.needs_scores:
            missing = [c for c in candidates if scores is None or c not in scores]
            if missing:
                raise ValueError(f"strategy {self.name!r} needs a score for every candidate; missing {missing[:5]}")
            assert scores is not None
            vectors = {c: self.ranked(tuple(float(v) for v in np.atleast_1d(scores[c]))) for c in candidates}
        if self.embedding is not None:
            embeddings = context.embeddings
            missing = [c for c in candidates if embeddings is None or c not in embeddings]
            if missing or context.labelled_embeddings_M_F is None:
                raise ValueError(
                    f"strategy {self.name!r} needs {self.embedding} embeddings of every candidate and of the "
                    f"labelled set; missing {missing[:5] or 'the labelled set'}"
                )
        true_foreground = context.true_foreground
        if self.simulation_only and (true_foreground is None or any(c not in true_foreground for c in candidates)):
            raise ValueError(
                f"strategy {self.name!r} is simulation-only: it needs the true foreground of every candidate"
            )
        sketches = context.sketches
        if self.sketch is not None and (sketches is None or any(c not in sketches for c in candidates)):
            raise ValueError(f"strategy {self.name!r} needs a sketch of every candidate")
        return self.selector(sorted(candidates), vectors, min(batch_size, len(candidates)), context)


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
        selector=select_random,
    )
)
register(
    Strategy(
        name="entropy",
        description="Top-k predictive entropy of the MC-dropout mean, reduced per volume.",
        source="Shannon 1948; with MC dropout as in Gal et al., ICML 2017. Entropy over every class, background "
        "included (MONAI Label's 'epistemic' drops the background: see `epistemic`).",
        scorer="predictive_entropy",
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="bald",
        description="Top-k BALD (mutual information, PE - EE) under MC dropout, reduced per volume.",
        source="Houlsby et al. 2011; Gal, Islam & Ghahramani, ICML 2017. Top-k, not BatchBALD's joint selection.",
        scorer="bald",
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="epistemic",
        description="MONAI Label's 'epistemic': entropy terms of the foreground classes of the MC-dropout mean "
        "(use reduction=mean), top-k.",
        source="MONAI Label (Project-MONAI), monailabel/tasks/scoring/epistemic.py: −Σ_{c≥1} p̄_c log p̄_c, "
        "background dropped. MONAI Label hands out one volume at a time; here the batch is the top-k of the same "
        "score, computed from seeded, batched MC passes.",
        scorer="foreground_entropy",
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="variance",
        description="Top-k class-averaged variance of the MC-dropout samples, reduced per volume.",
        source="Baal 'Variance' heuristic (baal-org); Gal et al., ICML 2017 (MC dropout).",
        scorer="variance",
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="margin",
        description="Top-k margin uncertainty 1 - (p1 - p2) of the MC-dropout mean, reduced per volume.",
        source="Scheffer et al., IDA 2001 (margin sampling); Baal 'Margin' heuristic.",
        scorer="margin",
        selector=select_top_k,
    )
)
register(
    Strategy(
        name="power-bald",
        description="PowerBALD: batch sampled without replacement with probability ∝ BALD^β (strategy.beta).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023; scores reduced per volume first.",
        scorer="bald",
        selector=stochastic_selector("power"),
    )
)
register(
    Strategy(
        name="power-entropy",
        description="PowerPE: batch sampled without replacement with probability ∝ PE^β (strategy.beta).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023; scores reduced per volume first.",
        scorer="predictive_entropy",
        selector=stochastic_selector("power"),
    )
)
register(
    Strategy(
        name="softmax-bald",
        description="Batch sampled without replacement with probability ∝ exp(β · BALD).",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023 (softmax acquisition).",
        scorer="bald",
        selector=stochastic_selector("softmax"),
    )
)
register(
    Strategy(
        name="clasp-pe",
        description="ClaSP PE: 66% of the batch split over foreground classes by PE·p̄_c, 34% by PE; power noising.",
        source="Lüth et al., 'ClaSP PE', TMLR 2026 (arXiv 2601.13677). Volumes as units here (the paper queries "
        "patches); β follows strategy.beta / beta_end / beta_schedule.",
        scorer="clasp",
        selector=select_clasp,
    )
)
register(
    Strategy(
        name="spread-clasp-pe",
        description="ClaSP PE whose batch is spread over cases: one unit per case until every case has given one.",
        source="activeseg (docs/attempts.md, 'Spread ClaSP PE'): ClaSP PE (Lüth et al., 2026) with a per-case cap, "
        "since uncertainty-chosen patches pile up in a few hard cases while random units cover many.",
        scorer="clasp",
        selector=spread_selector(select_clasp),
    )
)
register(
    Strategy(
        name="cost-clasp-pe",
        description="ClaSP PE per expected annotation cost: each unit's PE and PE·p̄_c over the foreground-weighted "
        "voxels it is expected to cost, then ClaSP PE's class shares and power noising.",
        source="activeseg (docs/attempts.md, 'Cost-aware ClaSP PE'): ClaSP PE (Lüth et al., 2026) with information "
        f"per unit of cost; the cost is the foreground_voxels model (a foreground voxel costs {FOREGROUND_WEIGHT:g}) "
        "expected under the mean prediction, since ClaSP PE's queries hold more foreground than foreground-random's.",
        scorer="clasp_cost",
        selector=select_clasp,
        per_expected_cost=True,
    )
)
register(
    Strategy(
        name="spread-power-entropy",
        description="PowerPE whose batch is spread over cases (spread-clasp-pe without class stratification).",
        source="activeseg: ablation of spread-clasp-pe; PowerPE from Kirsch et al., TMLR 2023.",
        scorer="predictive_entropy",
        selector=spread_selector(stochastic_selector("power")),
    )
)
register(
    Strategy(
        name="softrank-bald",
        description="Batch sampled without replacement with probability ∝ rank(BALD)^-β.",
        source="Kirsch et al., 'Stochastic Batch Acquisition', TMLR 2023 (soft-rank acquisition).",
        scorer="bald",
        selector=stochastic_selector("softrank"),
    )
)
register(
    Strategy(
        name="coreset",
        description="Core-set: greedy k-center on the U-Net's bottleneck features, covering the labelled set.",
        source="Sener & Savarese, ICLR 2018. Features are the spatially averaged bottleneck activations "
        "(the paper uses the penultimate layer of a classifier).",
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
        scorer="bald",
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
        selector=select_badge,
        embedding="gradient",
    )
)
register(
    Strategy(
        name="foreground-random",
        description="SIMULATION ONLY: random units, each pick from anywhere (4/6), TRUE foreground (1/6) or its "
        "border (1/6).",
        source="Foreground-aware random baseline of nnActive (Lüth et al., TMLR 2025), which draws patch centres "
        "from anywhere, the true foreground or the true border with probabilities 4/6, 1/6, 1/6. Here a unit is "
        "drawn ∝ its foreground (border) voxels, i.e. the unit of a random foreground (border) voxel, on the unit "
        "lattice rather than at a free centre. It reads unlabelled ground truth: simulated benchmarks only.",
        selector=select_foreground_aware_random,
        simulation_only=True,
    )
)
register(
    Strategy(
        name="strided",
        description="Evenly spaced slices (4 per volume) of randomly ordered volumes; random for other units.",
        source="Strided slice sampling, Burmeister et al., 'Less is more', 2022 (HealthML/active-segmentation). "
        "They label every n-th slice; here n adapts so each visited volume gives 4 evenly spaced slices.",
        selector=select_strided,
    )
)
register(
    Strategy(
        name="batchbald",
        description="BatchBALD for units: greedy joint MI, a unit's outcome being the class of one of its "
        "highest-BALD voxel sites.",
        source="Kirsch, van Amersfoort & Gal, NeurIPS 2019. Approximation (activeseg): a unit's outcome is the class "
        "of a voxel drawn uniformly from its strategy.sketch_sites (16) most uncertain voxels, so one unit carries "
        "far less than the log K cap; the batch's configurations are enumerated while there are at most "
        "strategy.joint_configurations (1000), else that many are sampled.",
        scorer="bald",
        selector=select_batchbald,
        sketch="sites",
    )
)
