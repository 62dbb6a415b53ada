"""Cold start: the round-0 labelled set, chosen before any model exists.

- ``random``: a seeded uniform sample (the default, as the benchmarks do).
- ``representative``: greedy k-center (Sener & Savarese, ICLR 2018) on label-free intensity features of the
  preprocessed volumes, standardised per feature, so the first labels cover the pool's appearance variety
  (scanner contrast, intensity range, a rare sub-population) instead of its most common case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from activeseg.acquisition.diversity import k_center_greedy

ColdStart = Literal["random", "representative"]
HISTOGRAM_BINS = np.linspace(-3.0, 3.0, 17)


def intensity_features(image_C_D_H_W: np.ndarray) -> np.ndarray:
    """A label-free appearance descriptor: a 16-bin histogram of normalised intensity plus the mean of each octant."""
    volume_D_H_W = image_C_D_H_W[0]
    histogram, _ = np.histogram(np.clip(volume_D_H_W, -3.0, 3.0), bins=HISTOGRAM_BINS)
    halves = [(slice(0, s // 2), slice(s // 2, None)) for s in volume_D_H_W.shape]
    octants = [volume_D_H_W[a, b, c].mean() for a in halves[0] for b in halves[1] for c in halves[2]]
    return np.concatenate([histogram / volume_D_H_W.size, np.asarray(octants, dtype=np.float64)])


def representative_subset(features_N_F: np.ndarray, k: int) -> np.ndarray:
    """Indices of k units covering the feature space (greedy k-center on z-scored features)."""
    spread = features_N_F.std(axis=0)
    standardised = (features_N_F - features_N_F.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return k_center_greedy(standardised, np.empty((0, features_N_F.shape[1])), k)


def initial_selection(
    method: ColdStart, pool: Sequence[str], k: int, rng: np.random.Generator, image: Callable[[str], np.ndarray]
) -> list[str]:
    """The round-0 labelled set (sorted ids)."""
    if method == "random":
        return sorted(rng.choice(list(pool), size=k, replace=False).tolist())
    if method == "representative":
        features_N_F = np.stack([intensity_features(image(c)) for c in pool])
        return sorted(pool[int(i)] for i in representative_subset(features_N_F, k))
    raise ValueError(f"unknown cold-start method {method!r}; valid: random, representative")
