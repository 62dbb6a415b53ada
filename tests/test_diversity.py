"""Batch-diversity selection, each checked against a brute-force reference computed another way."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from activeseg.acquisition import diversity
from activeseg.acquisition.diversity import (
    gradient_embedding,
    k_center_greedy,
    kmeans_pp_seeding,
    kmeans_top_per_cluster,
)


def brute_force_k_center(candidates: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    """Recompute every pairwise distance from scratch at each step."""
    picks: list[int] = []
    if len(labelled) == 0:
        picks.append(int(np.argmax(np.linalg.norm(candidates - candidates.mean(axis=0), axis=1))))
    while len(picks) < k:
        centres = np.concatenate([labelled, candidates[picks]])
        distances = np.linalg.norm(candidates[:, None, :] - centres[None, :, :], axis=-1).min(axis=1)
        distances[picks] = -np.inf
        picks.append(int(np.argmax(distances)))
    return picks


@pytest.mark.parametrize("n_labelled", [0, 1, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_brute_force(n_labelled: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(40, 5))
    labelled = rng.normal(size=(n_labelled, 5))
    picks = k_center_greedy(candidates, labelled, 12)
    assert picks.tolist() == brute_force_k_center(candidates, labelled, 12)
    assert len(set(picks.tolist())) == 12


def test_k_center_chunked_labelled_set_gives_the_same_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    candidates, labelled = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    expected = brute_force_k_center(candidates, labelled, 10)
    monkeypatch.setattr(diversity, "_BLOCK_ELEMENTS", 70)  # blocks of 2 labelled points
    assert k_center_greedy(candidates, labelled, 10).tolist() == expected


def test_k_center_by_hand() -> None:
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    # labelled at 0: nearest distances 0, 1, 2, 10 -> 10; then 0, 1, 2 -> 2; then 1; then 0 (a duplicate)
    assert k_center_greedy(points, np.array([[0.0]]), 4).tolist() == [3, 2, 1, 0]
    # no labelled set: mean 3.25, farthest is 10; then 0 (10 away); then 2 (2 from 0, 8 from 10); then 1
    assert k_center_greedy(points, np.empty((0, 1)), 4).tolist() == [3, 0, 2, 1]
    # tie: 0 and 4 are both 2 away from the labelled 2 -> the smaller index
    assert k_center_greedy(np.array([[0.0], [2.0], [4.0]]), np.array([[2.0]]), 1).tolist() == [0]


def test_k_center_duplicates_stay_distinct_and_inputs_untouched() -> None:
    candidates = np.zeros((5, 3))
    labelled = np.zeros((2, 3))
    picks = k_center_greedy(candidates, labelled, 5)
    assert sorted(picks.tolist()) == [0, 1, 2, 3, 4]
    assert picks.tolist() == [0, 1, 2, 3, 4]  # all tied at distance 0 -> index order
    assert np.all(candidates == 0) and np.all(labelled == 0)


def four_blobs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    blob_N = np.repeat(np.arange(4), 25)
    points = centres[blob_N] + rng.normal(scale=1.0, size=(100, 2))
    return points, blob_N


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_top_picks_the_best_of_each_blob(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points, blob_N = four_blobs(rng)
    scores = rng.random(100)
    picks = kmeans_top_per_cluster(points, scores, 4, np.random.default_rng(seed))
    assert sorted(blob_N[picks].tolist()) == [0, 1, 2, 3]
    expected = {int(np.flatnonzero(blob_N == b)[np.argmax(scores[blob_N == b])]) for b in range(4)}
    assert set(picks.tolist()) == expected
    assert np.all(np.diff(scores[picks]) <= 0)  # descending score


def test_kmeans_top_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    points, scores = rng.normal(size=(60, 3)), rng.random(60)
    first = kmeans_top_per_cluster(points, scores, 7, np.random.default_rng(42))
    again = kmeans_top_per_cluster(points, scores, 7, np.random.default_rng(42))
    assert first.tolist() == again.tolist()
    assert len(set(first.tolist())) == 7


def test_kmeans_top_k_equals_n_and_identical_points() -> None:
    rng = np.random.default_rng(0)
    scores = np.array([0.3, 0.9, 0.3, 0.1, 0.5])
    by_score = [1, 4, 0, 2, 3]  # ties (0.3) -> smaller index first
    assert kmeans_top_per_cluster(rng.normal(size=(5, 2)), scores, 5, rng).tolist() == by_score
    identical = np.ones((5, 2))
    # one distinct point: its top member, then the best of the rest
    assert kmeans_top_per_cluster(identical, scores, 3, rng).tolist() == by_score[:3]
    # two distinct points (rows 0-2 and 3-4): the top of each, then the best remaining
    two = np.array([[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 2)
    assert kmeans_top_per_cluster(two, scores, 3, rng).tolist() == [1, 4, 0]


def test_kmeans_top_fills_empty_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    def everything_in_cluster_zero(data: np.ndarray, k: int, **_: object) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((k, data.shape[1])), np.zeros(len(data), dtype=np.int32)

    monkeypatch.setattr(diversity, "kmeans2", everything_in_cluster_zero)
    scores = np.array([0.2, 0.8, 0.5, 0.9])
    points = np.arange(8.0).reshape(4, 2)
    assert kmeans_top_per_cluster(points, scores, 2, np.random.default_rng(0)).tolist() == [3, 1]


def test_kmeans_pp_first_pick_is_the_largest_norm() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 4))
    expected = int(np.argmax([np.sqrt(sum(x * x for x in row)) for row in points]))
    for seed in range(3):
        assert kmeans_pp_seeding(points, 5, np.random.default_rng(seed))[0] == expected


def test_kmeans_pp_separates_two_far_clusters() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(scale=0.01, size=(20, 3)), 50 + rng.normal(scale=0.01, size=(20, 3))])
    for seed in range(10):
        picks = kmeans_pp_seeding(points, 2, np.random.default_rng(seed))
        assert sorted((picks >= 20).tolist()) == [False, True]


def test_kmeans_pp_second_pick_follows_squared_distances() -> None:
    points = np.array([[3.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # first pick: (3, 0), norm 3
    squared = np.array([((points[i] - points[0]) ** 2).sum() for i in range(4)])  # 0, 9, 5, 13
    expected = squared / squared.sum()
    rng = np.random.default_rng(0)
    draws = 20_000
    seconds = [kmeans_pp_seeding(points, 2, rng) for _ in range(draws)]
    assert all(s[0] == 0 for s in seconds)
    frequency = np.bincount([s[1] for s in seconds], minlength=4) / draws
    # 5 standard errors of a binomial proportion: fails on a wrong distribution, not on noise
    tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(frequency - expected) <= tolerance), (frequency, expected)


def test_kmeans_pp_duplicates() -> None:
    points = np.array([[1.0, 1.0]] * 4 + [[5.0, 5.0]])
    picks = kmeans_pp_seeding(points, 5, np.random.default_rng(0))
    assert picks[0] == 4 and picks[1] in {0, 1, 2, 3}
    assert sorted(picks.tolist()) == [0, 1, 2, 3, 4]
    same = [kmeans_pp_seeding(points, 5, np.random.default_rng(1)).tolist() for _ in range(2)]
    assert same[0] == same[1]


@pytest.mark.parametrize(("classes", "features", "voxels"), [(2, 3, 17), (4, 6, 50)])
def test_gradient_embedding_matches_autograd(classes: int, features: int, voxels: int) -> None:
    gen = torch.Generator().manual_seed(classes)
    weight = torch.randn(classes, features, dtype=torch.float64, generator=gen, requires_grad=True)
    hidden_F_V = torch.randn(features, voxels, dtype=torch.float64, generator=gen)
    logits_C_V = weight @ hidden_F_V
    target_V = logits_C_V.argmax(dim=0).detach()
    torch.autograd.backward(F.cross_entropy(logits_C_V.T, target_V, reduction="mean"))
    assert weight.grad is not None
    probs_C_V = torch.softmax(logits_C_V.detach(), dim=0).numpy()
    embedding = gradient_embedding(probs_C_V, hidden_F_V.numpy())
    assert embedding.shape == (classes * features,)
    np.testing.assert_allclose(embedding.reshape(classes, features), weight.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_embedding_matches_a_1x1x1_conv_head() -> None:
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Conv3d(5, 3, kernel_size=1, bias=False).double()
    hidden = torch.randn(1, 5, 4, 3, 2, dtype=torch.float64, generator=gen)
    logits = head(hidden)
    torch.autograd.backward(F.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="mean"))
    assert head.weight.grad is not None
    probs_C_V = torch.softmax(logits.detach(), dim=1)[0].reshape(3, -1).numpy()
    embedding = gradient_embedding(probs_C_V, hidden[0].reshape(5, -1).numpy())
    np.testing.assert_allclose(embedding, head.weight.grad.reshape(-1).numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_embedding_does_not_mutate_probs() -> None:
    probs = np.array([[0.7, 0.2], [0.3, 0.8]])
    before = probs.copy()
    gradient_embedding(probs, np.ones((2, 2)))
    np.testing.assert_array_equal(probs, before)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: k_center_greedy(np.zeros((3, 2)), np.zeros((1, 3)), 1), "features"),
        (lambda: k_center_greedy(np.zeros((3, 2)), np.zeros((0, 2)), 4), "k must be"),
        (lambda: k_center_greedy(np.zeros(3), np.zeros((0, 2)), 1), "2-D"),
        (lambda: k_center_greedy(np.array([[np.nan]]), np.zeros((0, 1)), 1), "finite"),
        (lambda: kmeans_top_per_cluster(np.zeros((3, 2)), np.zeros(4), 1, np.random.default_rng()), "scores_N"),
        (
            lambda: kmeans_top_per_cluster(np.zeros((3, 2)), np.array([0, np.inf, 0]), 1, np.random.default_rng()),
            "finite",
        ),
        (lambda: kmeans_pp_seeding(np.zeros((3, 2)), 0, np.random.default_rng()), "k must be"),
        (lambda: kmeans_pp_seeding(np.zeros((3, 2)), 1.0, np.random.default_rng()), "k must be"),  # type: ignore[arg-type]
        (lambda: gradient_embedding(np.full((2, 3), 0.5), np.zeros((4, 2))), "voxels"),
        (lambda: gradient_embedding(np.full((2, 3), 0.6), np.zeros((4, 3))), "sum to 1"),
        (lambda: gradient_embedding(np.array([[1.5], [-0.5]]), np.zeros((4, 1))), "non-negative"),
    ],
)
def test_invalid_arguments_raise(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
