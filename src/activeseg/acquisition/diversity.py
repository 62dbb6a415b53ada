"""Batch-diversity selection: pick k units that are informative *and* different from each other.

Pure numpy/scipy (no torch). Every function works in float64, never mutates its inputs, and is deterministic given
its ``np.random.Generator`` (those without one are deterministic outright). Ties go to the smaller index.

- :func:`k_center_greedy` — Core-set (Sener & Savarese, ICLR 2018).
- :func:`kmeans_top_per_cluster` — cluster-then-top (Zhdanov 2019; the k-means baseline discussed by Kirsch et al.
  2019 for BatchBALD).
- :func:`kmeans_pp_seeding` — BADGE's selection step (Ash et al., ICLR 2020).
- :func:`gradient_embedding` — BADGE's last-layer gradient embedding, voxels as samples.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import cdist

# Largest distance block (in float64 elements) built at once; tests shrink it to exercise the chunking.
_BLOCK_ELEMENTS = 1 << 20
_PROB_SUM_ATOL = 1e-4


def _as_matrix(array: np.ndarray, name: str, *, allow_empty_rows: bool = False) -> np.ndarray:
    """``array`` as a finite float64 (rows, columns) matrix; a view when it already is one."""
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {matrix.shape}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {matrix.shape}")
    if matrix.shape[0] == 0 and not allow_empty_rows:
        raise ValueError(f"{name} must have at least one row, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} must contain only finite values")
    return matrix


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of candidates), got {k!r}")
    return int(k)


def _update_min_sq_dist(min_sq_N: np.ndarray, points_N_F: np.ndarray, centres_M_F: np.ndarray) -> None:
    """``min_sq_N`` ← min(``min_sq_N``, squared distance to the nearest centre), in blocks over the centres."""
    n = points_N_F.shape[0]
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, centres_M_F.shape[0], step):
        # cdist sums (x - c)² directly (no ‖x‖² − 2x·c + ‖c‖² cancellation), so duplicates are exactly 0 apart
        block_N_B = cdist(points_N_F, centres_M_F[start : start + step], "sqeuclidean")
        np.minimum(min_sq_N, block_N_B.min(axis=1), out=min_sq_N)


def k_center_greedy(candidates_N_F: np.ndarray, labelled_M_F: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center (Core-set; Sener & Savarese, "Active Learning for CNNs: A Core-Set Approach", ICLR 2018).

    Repeatedly picks the candidate whose Euclidean distance to its nearest point among the labelled set and the
    candidates picked so far is largest: a 2-approximation of the k-center objective. With no labelled points
    (M == 0) the first pick is the candidate farthest from the candidates' mean, which keeps it deterministic.
    Ties go to the smaller index. ``labelled_M_F`` may have zero rows but must have F columns.

    Returns k distinct candidate indices in pick order. O(N·(M+k)·F) time; the running nearest distance takes O(N)
    memory and distances to the labelled set are built in blocks of at most ``_BLOCK_ELEMENTS``.
    """
    candidates = _as_matrix(candidates_N_F, "candidates_N_F")
    labelled = _as_matrix(labelled_M_F, "labelled_M_F", allow_empty_rows=True)
    n, f = candidates.shape
    if labelled.shape[1] != f:
        raise ValueError(f"labelled_M_F has {labelled.shape[1]} features but candidates_N_F has {f}")
    k = _check_k(k, n)

    picks: list[int] = []
    min_sq_N = np.full(n, np.inf)
    if labelled.shape[0] == 0:
        first = int(np.argmax(cdist(candidates, candidates.mean(axis=0, keepdims=True), "sqeuclidean")[:, 0]))
        picks.append(first)
        _update_min_sq_dist(min_sq_N, candidates, candidates[first : first + 1])
        min_sq_N[first] = -1.0
    else:
        _update_min_sq_dist(min_sq_N, candidates, labelled)
    while len(picks) < k:
        # picked candidates hold -1 < any distance, so they are never picked again, even among duplicates
        pick = int(np.argmax(min_sq_N))
        picks.append(pick)
        _update_min_sq_dist(min_sq_N, candidates, candidates[pick : pick + 1])
        min_sq_N[pick] = -1.0
    return np.asarray(picks, dtype=np.int64)


def kmeans_top_per_cluster(
    embeddings_N_F: np.ndarray, scores_N: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Cluster-then-top: k-means into k clusters, then each cluster's highest-scoring member.

    The common diversity baseline (Zhdanov, "Diverse mini-batch Active Learning", arXiv:1901.05954, 2019; the
    k-means-on-top-of-BALD comparison in Kirsch, van Amersfoort & Gal, "BatchBALD", NeurIPS 2019). Clustering is
    ``scipy.cluster.vq.kmeans2(..., minit="++", seed=rng)`` on the raw features. When there are at most k distinct
    points, each distinct point is its own cluster and kmeans2 is not called. Clusters that come out empty leave
    picks unfilled; those go to the highest-scoring candidates not yet picked. Ties in score go to the smaller index.

    Returns k distinct indices ordered by descending score.
    """
    embeddings = _as_matrix(embeddings_N_F, "embeddings_N_F")
    n = embeddings.shape[0]
    scores = np.asarray(scores_N, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores_N must have shape ({n},) to match embeddings_N_F, got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores_N must contain only finite values")
    k = _check_k(k, n)

    order_N = np.lexsort((np.arange(n), -scores))  # descending score, ties -> smaller index
    if k == n:
        return order_N
    _, distinct_N = np.unique(embeddings, axis=0, return_inverse=True)
    distinct_N = distinct_N.reshape(-1)  # numpy 2.0.x returns it with a trailing axis
    if int(distinct_N.max()) + 1 <= k:
        labels_N = distinct_N
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "One of the clusters is empty": handled below
            _, labels_N = kmeans2(embeddings, k, minit="++", seed=rng)
    # the first time a label appears in score order marks that cluster's top member
    _, first_positions = np.unique(labels_N[order_N], return_index=True)
    chosen = np.zeros(n, dtype=bool)  # by position in order_N
    chosen[first_positions] = True
    missing = k - int(chosen.sum())
    if missing > 0:
        chosen[np.flatnonzero(~chosen)[:missing]] = True
    return order_N[chosen]


def kmeans_pp_seeding(embeddings_N_F: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding as BADGE's selection step (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain
    Gradient Lower Bounds", ICLR 2020).

    The first pick is the point with the largest norm, as in BADGE's reference implementation (ties -> smaller
    index); each next pick is sampled with probability ∝ D(x)², the squared distance to the nearest point picked so
    far (Arthur & Vassilvitskii, SODA 2007). If every unpicked point has D² = 0 (duplicates of picked points), the
    next pick is uniform over the unpicked ones.

    Returns k distinct indices in pick order.
    """
    embeddings = _as_matrix(embeddings_N_F, "embeddings_N_F")
    n = embeddings.shape[0]
    k = _check_k(k, n)

    first = int(np.argmax(np.linalg.norm(embeddings, axis=1)))
    picks = [first]
    unpicked_N = np.ones(n, dtype=bool)
    unpicked_N[first] = False
    min_sq_N = np.full(n, np.inf)
    _update_min_sq_dist(min_sq_N, embeddings, embeddings[first : first + 1])
    while len(picks) < k:
        weights_N = np.where(unpicked_N, min_sq_N, 0.0)
        cumulative_N = np.cumsum(weights_N)
        if cumulative_N[-1] > 0:
            # inverse-CDF draw: the first i with cumulative[i] > u, so weights[i] > 0
            pick = int(np.searchsorted(cumulative_N, rng.random() * cumulative_N[-1], side="right"))
            if pick == n:  # u rounded up to the total
                pick = int(np.flatnonzero(weights_N)[-1])
        else:  # every unpicked point duplicates a picked one: uniform over the unpicked
            unpicked = np.flatnonzero(unpicked_N)
            pick = int(unpicked[rng.integers(len(unpicked))])
        picks.append(pick)
        unpicked_N[pick] = False
        _update_min_sq_dist(min_sq_N, embeddings, embeddings[pick : pick + 1])
    return np.asarray(picks, dtype=np.int64)


def gradient_embedding(probs_C_V: np.ndarray, features_F_V: np.ndarray) -> np.ndarray:
    """BADGE's gradient embedding (Ash et al., ICLR 2020) of one segmentation unit, its V voxels as samples.

    The gradient, with respect to the weights W (C×F) of a final 1x1x1 linear layer (logits = W h), of the mean
    over voxels of the cross-entropy against the pseudo-label ŷ_v = argmax_c p_cv (ties -> smaller class):
    g = (1/V) Σ_v (p_v − onehot(ŷ_v)) h_vᵀ, flattened row-major (class-major) to length C·F.

    ``probs_C_V`` must be non-negative and sum to 1 over C at every voxel (within 1e-4); ``features_F_V`` are the
    penultimate-layer activations h at the same voxels.
    """
    probs = _as_matrix(probs_C_V, "probs_C_V")
    features = _as_matrix(features_F_V, "features_F_V")
    c, v = probs.shape
    f = features.shape[0]
    if features.shape[1] != v:
        raise ValueError(f"probs_C_V has {v} voxels but features_F_V has {features.shape[1]}")
    if np.any(probs < 0):
        raise ValueError("probs_C_V must be non-negative")
    sums_V = probs.sum(axis=0)
    if not np.allclose(sums_V, 1.0, rtol=0.0, atol=_PROB_SUM_ATOL):
        worst = float(np.max(np.abs(sums_V - 1.0)))
        raise ValueError(f"probs_C_V must sum to 1 over classes at every voxel (off by up to {worst:.3g})")

    residual_C_V = probs.copy()  # never write into the caller's array
    residual_C_V[np.argmax(probs, axis=0), np.arange(v)] -= 1.0
    grad_C_F = residual_C_V @ features.T / v
    return np.asarray(grad_C_F.reshape(c * f))
