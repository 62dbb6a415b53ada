"""BatchBALD for segmentation volumes: greedy joint mutual information over sampled voxel sites.

BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019) picks a batch that maximises the *joint* mutual information
I(y_1, …, y_n; ω) instead of the sum of individual BALD scores, so near-duplicate units stop adding value. The exact
joint entropy is infeasible over every voxel of a volume, so this module approximates it:

1. **A unit's outcome** is the labels of V voxel sites: the unit's V highest-BALD voxels (the sketch: sites chosen
   by ``scorers.top_sites`` from the windowed moments, their K samples re-read by ``sliding.site_probs`` with the
   same seeds, so the same samples as the scores). Given the model ω_k,
   voxels are treated as independent, so p_k(y_i) = Π_v p_k(y_iv).
2. **Joint entropy** H(y_1..n) of the batch is estimated by Monte Carlo over m configurations drawn from the joint
   predictive: pick ω_k uniformly, then every site's label from p_k. With the configurations drawn *first* (seeded),
   H ≈ −mean_s log( mean_k Π_i p_k(y_i^s) ).
3. **Conditional entropy** is exact: Σ_i Σ_v mean_k H[p_k(y_iv)].
4. **Greedy** selection adds the unit with the largest joint MI, as BatchBALD does (a (1 − 1/e)-approximation for
   the exact objective, which is submodular).

What differs from the paper: sites instead of whole outputs, conditional independence of sites given ω, and
configurations sampled for every batch size (the paper enumerates exactly while it can).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

_TINY = 1e-12


def conditional_entropy(sketch_K_V_C: np.ndarray) -> float:
    """Σ_v mean_k H[p_k(y_v)]: the expected entropy of the unit's outcome given the model."""
    p = np.clip(sketch_K_V_C, _TINY, 1.0)
    return float(-(sketch_K_V_C * np.log(p)).sum(axis=2).sum(axis=1).mean())


def sample_configurations(
    sketches: list[np.ndarray], configurations: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw m joint configurations: model indices k_s, and for every unit its site labels y_i^s ~ p_{k_s}."""
    k_models = sketches[0].shape[0]
    models_S = rng.integers(k_models, size=configurations)
    labels = []
    for sketch_K_V_C in sketches:
        cumulative_S_V_C = np.cumsum(sketch_K_V_C[models_S], axis=2)
        draws_S_V_1 = rng.random((configurations, sketch_K_V_C.shape[1], 1)) * cumulative_S_V_C[:, :, -1:]
        labels.append((draws_S_V_1 > cumulative_S_V_C).sum(axis=2).clip(max=sketch_K_V_C.shape[2] - 1))
    return models_S, labels


def log_likelihoods(sketch_K_V_C: np.ndarray, labels_S_V: np.ndarray) -> np.ndarray:
    """log p_k(y^s) = Σ_v log p_k(y_v^s) for every model k and configuration s: an array K×S."""
    log_p_K_V_C = np.log(np.clip(sketch_K_V_C, _TINY, 1.0))
    sites = np.arange(labels_S_V.shape[1])
    return np.asarray(log_p_K_V_C[:, sites[None, :], labels_S_V].sum(axis=2))


def greedy_batchbald(
    sketches: list[np.ndarray], k: int, rng: np.random.Generator, configurations: int = 1000
) -> tuple[list[int], list[float]]:
    """Greedy BatchBALD: k unit indices in pick order, and the estimated joint MI after each pick."""
    if not sketches:
        raise ValueError("no candidates")
    if not 1 <= k <= len(sketches):
        raise ValueError(f"k must be in [1, {len(sketches)}], got {k}")
    shapes = {s.shape[0] for s in sketches}
    if len(shapes) != 1:
        raise ValueError(f"every sketch needs the same number of samples K, got {sorted(shapes)}")
    _, labels = sample_configurations(sketches, configurations, rng)
    loglik_N_K_S = np.stack([log_likelihoods(s, y) for s, y in zip(sketches, labels, strict=True)])
    conditional_N = np.array([conditional_entropy(s) for s in sketches])
    k_models = loglik_N_K_S.shape[1]
    batch_K_S = np.zeros(loglik_N_K_S.shape[1:])
    batch_conditional = 0.0
    picked: list[int] = []
    gains: list[float] = []
    available = np.ones(len(sketches), dtype=bool)
    for _ in range(k):
        joint_N_S = logsumexp(batch_K_S[None] + loglik_N_K_S, axis=1) - np.log(k_models)
        mutual_information_N = -joint_N_S.mean(axis=1) - (batch_conditional + conditional_N)
        mutual_information_N[~available] = -np.inf
        best = int(np.argmax(mutual_information_N))  # ties go to the smaller index
        picked.append(best)
        gains.append(float(mutual_information_N[best]))
        available[best] = False
        batch_K_S = batch_K_S + loglik_N_K_S[best]
        batch_conditional += float(conditional_N[best])
    return picked, gains
