"""The ``strategy`` section of a run config: which registered acquisition strategy runs, how its voxel scores are
pooled per unit, and where its K stochastic predictions come from. Part of the run config tree of
:mod:`activeseg.config`, which re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from activeseg.acquisition.registry import STRATEGIES
from activeseg.acquisition.stochastic import scheduled_beta
from activeseg.validation import MAX_BATCH_SIZE, require


@dataclass(frozen=True)
class StrategyConfig:
    """Which registered acquisition strategy to use, and how voxel scores become one score per volume."""

    name: str = "random"
    reduction: Literal["mean", "top_q", "foreground", "sum"] = "mean"
    top_q: float = 0.05
    """Fraction of the highest-scoring voxels averaged by the ``top_q`` reduction."""
    uncertainty: Literal["mc_dropout", "tta", "ensemble"] = "mc_dropout"
    """Where the K stochastic predictions come from: MC dropout, test-time augmentation (flips on
    ``train.flip_axes`` plus small intensity changes, mapped back), or a deep ensemble of ``ensemble_size``
    independently seeded models (K = ``ensemble_size``)."""
    mc_samples: int = 8
    """Stochastic predictions (K) per volume for MC dropout and TTA."""
    ensemble_size: int = 4
    """Models in a deep ensemble, the evaluated round model included; the others are trained only for scoring."""
    mc_batch_size: int | None = None
    """Forward rows (window × pass) per model call when scoring; None: as many as fill about 1.5 million voxels
    on a CPU (cache-sized: larger batches run slower per row there) and 8 on CUDA (``uncertainty.rows_per_call``)."""
    beta: float = 1.0
    """Sharpness of the stochastic strategies (power-*, softmax-*, softrank-*, clasp-pe): 0 is uniform."""
    beta_end: float | None = None
    """β in the last acquisition round when ``beta_schedule`` is not constant (noise decays as β grows)."""
    beta_schedule: Literal["constant", "exponential", "sigmoid"] = "constant"
    sketch_sites: int = 16
    """BatchBALD: voxel sites per unit (its highest-BALD voxels); its outcome is the class of one, drawn uniformly."""
    joint_configurations: int = 1000
    """BatchBALD: a batch's C^batch configurations are enumerated while at most this many, else this many sampled."""
    cpu_bf16: bool = False
    """Score on CPU under bfloat16 autocast: about 1.6× faster where oneDNN convolves bf16 natively (AVX-512) and
    deterministic; scores move by ~0.2%, less than other dropout masks move them (BENCHMARKS.md). Ignored, with a
    warning, on other CPUs, where bf16 would be far slower. CUDA follows ``train.amp``."""

    def __post_init__(self) -> None:
        require(
            self.name in STRATEGIES,
            "strategy.name",
            f"unknown strategy {self.name!r}; registered: {', '.join(sorted(STRATEGIES))}",
        )
        require(0.0 < self.top_q <= 1.0, "strategy.top_q", "must be in (0, 1]")
        require(
            not (STRATEGIES[self.name].per_expected_cost and self.reduction == "top_q"),
            "strategy.reduction",
            f"top_q cannot price a unit: {self.name} divides its total score by its total expected cost (use mean, "
            "sum or foreground)",
        )
        require(self.mc_samples >= 2, "strategy.mc_samples", "must be at least 2 for a spread of predictions")
        require(
            self.mc_batch_size is None or 1 <= self.mc_batch_size <= MAX_BATCH_SIZE,
            "strategy.mc_batch_size",
            f"must be between 1 and {MAX_BATCH_SIZE}, or null (chosen by the device)",
        )
        require(self.ensemble_size >= 2, "strategy.ensemble_size", "must be at least 2 for a spread of predictions")
        require(self.sketch_sites >= 1, "strategy.sketch_sites", "must be at least 1")
        require(self.joint_configurations >= 10, "strategy.joint_configurations", "must be at least 10")
        require(self.beta >= 0, "strategy.beta", "must be >= 0")
        if self.beta_schedule != "constant":
            require(self.beta_end is not None, "strategy.beta_end", f"is needed by beta_schedule={self.beta_schedule}")
            require(
                self.beta > 0 and (self.beta_end or 0) > 0, "strategy.beta", "and beta_end must be > 0 for a schedule"
            )

    def beta_at(self, round_index: int, rounds: int) -> float:
        """β for acquisition round ``round_index`` of ``rounds`` (see :func:`.stochastic.scheduled_beta`)."""
        return scheduled_beta(self.beta_schedule, self.beta, self.beta_end, round_index, rounds)
