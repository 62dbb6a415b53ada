"""Pure uncertainty scorers and reductions, computed from the per-voxel moments of K stochastic predictions.

Shapes are in the names. A scorer maps :class:`~activeseg.acquisition.moments.Moments` (the mean prediction p̄, the
mean entropy and the mean squared probabilities of K samples over C classes) to a voxel map ``score_D_H_W`` (or a
stack ``score_M_D_H_W``); a reduction maps one map to one number per query unit. None of these functions mutates its
input. Definitions follow ``shared/docs/anchors.md``:

- predictive entropy  PE  = H[p̄]
- expected entropy    EE  = mean_k H[p_k]
- BALD (mutual information) = PE - EE >= 0  (Houlsby et al. 2011; Gal et al., ICML 2017)
- variance            mean_c (E_k[p_k(c)²] - p̄_c²)   (population variance over the K samples)
- margin              1 - (p̄_(1) - p̄_(2)), the two largest mean class probabilities
- class-specific PE   PE · p̄_c, one map per class (ClaSP PE, Lüth et al., TMLR 2026)
- expected cost       1 + (w − 1)(1 − p̄_0), a voxel's foreground-weighted annotation cost expected under p̄
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from activeseg.acquisition.costs import FOREGROUND_WEIGHT
from activeseg.acquisition.moments import MomentName, Moments, sample_entropy

VoxelScorer = Callable[[Moments], Tensor]
"""moments -> score_D_H_W (or score_M_D_H_W)"""

Reduction = Callable[[Tensor, Tensor], float]
"""(score_D_H_W, mean_probs_C_D_H_W) -> one score for the unit"""

SiteChooser = Callable[[Moments, tuple[slice, ...], int], Tensor]
"""(moments of a volume, a unit's region, V) -> sites_V_3: the voxel coordinates whose K samples sketch the unit"""


def predictive_entropy(moments: Moments) -> Tensor:
    """Entropy of the mean prediction, per voxel: H[p̄]."""
    return sample_entropy(moments.mean_probs_C_D_H_W, dim=0)


def foreground_entropy(moments: Moments) -> Tensor:
    """MONAI Label's epistemic voxel score: −Σ_{c ≥ 1} p̄_c log p̄_c, the entropy terms of the foreground classes of
    the mean prediction only (the background channel is dropped, so the terms need not sum to H[p̄])."""
    return sample_entropy(moments.mean_probs_C_D_H_W[1:], dim=0)


def expected_entropy(moments: Moments) -> Tensor:
    """Mean entropy of the individual predictions, per voxel: mean_k H[p_k] (a copy)."""
    return moments.mean_entropy_D_H_W.clone()


def bald(moments: Moments) -> Tensor:
    """Mutual information between the prediction and the model parameters, per voxel: PE - EE.

    Mathematically non-negative (Jensen); clamped at 0 to remove float round-off.
    """
    return (predictive_entropy(moments) - moments.mean_entropy_D_H_W).clamp_min_(0.0)


def variance(moments: Moments) -> Tensor:
    """Spread of the K predictions, per voxel: the class-averaged population variance E[p²] - p̄² (clamped >= 0)."""
    spread_C_D_H_W = moments.mean_sq_probs_C_D_H_W - moments.mean_probs_C_D_H_W.square()
    return spread_C_D_H_W.clamp_min_(0.0).mean(dim=0)


def margin(moments: Moments) -> Tensor:
    """One minus the gap between the two most probable classes of the mean prediction (1 = a tie)."""
    top2_2_D_H_W = torch.topk(moments.mean_probs_C_D_H_W, k=2, dim=0).values
    return 1.0 - (top2_2_D_H_W[0] - top2_2_D_H_W[1])


def class_predictive_entropy(moments: Moments) -> Tensor:
    """Class-specific uncertainty PE · p̄_c for every class: score_C_D_H_W (ClaSP PE, Lüth et al., TMLR 2026)."""
    return predictive_entropy(moments).unsqueeze(0) * moments.mean_probs_C_D_H_W


def clasp_maps(moments: Moments) -> Tensor:
    """Plain PE followed by PE · p̄_c for each foreground class c: score_M_D_H_W with M = C (ClaSP PE)."""
    pe_D_H_W = predictive_entropy(moments)
    return torch.cat([pe_D_H_W.unsqueeze(0), pe_D_H_W.unsqueeze(0) * moments.mean_probs_C_D_H_W[1:]])


def expected_cost(moments: Moments) -> Tensor:
    """Each voxel's annotation cost in the ``foreground_voxels`` model (a foreground voxel costs
    ``FOREGROUND_WEIGHT`` background voxels), expected under the mean prediction: 1 + (w − 1)(1 − p̄_0)."""
    return 1.0 + (FOREGROUND_WEIGHT - 1.0) * (1.0 - moments.mean_probs_C_D_H_W[0])


def clasp_cost_maps(moments: Moments) -> Tensor:
    """ClaSP PE's maps, then the expected annotation cost: score_M_D_H_W with M = C + 1 (``cost-clasp-pe``)."""
    return torch.cat([clasp_maps(moments), expected_cost(moments).unsqueeze(0)])


def as_map_stack(score: Tensor, moments: Moments) -> Tensor:
    """A scorer's output as a stack of voxel maps: score_D_H_W becomes score_1_D_H_W; score_M_D_H_W stays."""
    return score.unsqueeze(0) if score.dim() == len(moments.shape) else score


def reduce_mean(score_D_H_W: Tensor, mean_probs_C_D_H_W: Tensor) -> float:
    """Mean over all voxels of the unit (MONAI Label's "epistemic" reduction)."""
    del mean_probs_C_D_H_W
    return float(score_D_H_W.double().mean())


def reduce_top_q(score_D_H_W: Tensor, mean_probs_C_D_H_W: Tensor, q: float) -> float:
    """Mean of the highest ``q`` fraction of voxel scores (at least one voxel): rewards a focused uncertain region."""
    del mean_probs_C_D_H_W
    flat = score_D_H_W.reshape(-1)
    k = max(1, round(q * flat.numel()))
    return float(torch.topk(flat, k).values.double().mean())


def reduce_foreground(score_D_H_W: Tensor, mean_probs_C_D_H_W: Tensor) -> float:
    """Mean weighted by the predicted foreground probability, 1 - p̄(background).

    Concentrates the score on the structure rather than on the large, easy background. Falls back to the plain
    mean when the model predicts no foreground at all.
    """
    weight_D_H_W = (1.0 - mean_probs_C_D_H_W[0]).double()
    total = float(weight_D_H_W.sum())
    if total <= 1e-12:
        return reduce_mean(score_D_H_W, mean_probs_C_D_H_W)
    return float((score_D_H_W.double() * weight_D_H_W).sum() / total)


def reduce_sum(score_D_H_W: Tensor, mean_probs_C_D_H_W: Tensor) -> float:
    """Sum over the unit's voxels: favours large units (Baal's ``sum`` reduction)."""
    del mean_probs_C_D_H_W
    return float(score_D_H_W.double().sum())


SCORERS: dict[str, VoxelScorer] = {
    "predictive_entropy": predictive_entropy,
    "foreground_entropy": foreground_entropy,
    "expected_entropy": expected_entropy,
    "bald": bald,
    "variance": variance,
    "margin": margin,
    "clasp": clasp_maps,
    "clasp_cost": clasp_cost_maps,
}
"""The voxel scorers a strategy names (``registry.Strategy.scorer``); ``clasp`` gives M = C maps, ``clasp_cost``
M = C + 1 (the last the expected cost), the others one."""

NEEDS: dict[str, frozenset[MomentName]] = {
    "predictive_entropy": frozenset(),
    "foreground_entropy": frozenset(),
    "expected_entropy": frozenset({"entropy"}),
    "bald": frozenset({"entropy"}),
    "variance": frozenset({"squares"}),
    "margin": frozenset(),
    "clasp": frozenset(),
    "clasp_cost": frozenset(),
    "sites": frozenset({"entropy"}),  # the sketch: top_sites ranks voxels by BALD
}
"""The optional moments each scorer (and each sketch of :data:`SKETCHES`) reads besides p̄: the scoring pass computes
only these (``moments`` explains why)."""


def moments_needed(scorer: str, sketch: str | None = None) -> frozenset[MomentName]:
    """The optional moments the scorer called ``scorer`` and the sketch called ``sketch`` read."""
    try:
        return NEEDS[scorer] | (NEEDS[sketch] if sketch is not None else frozenset())
    except KeyError as unknown:
        raise KeyError(f"no moments declared for {unknown.args[0]!r}; declared: {', '.join(sorted(NEEDS))}") from None


def strategy_maps(scorer: str, moments: Moments) -> Tensor:
    """The voxel maps of the scorer called ``scorer``, as a stack: score_M_D_H_W."""
    try:
        score = SCORERS[scorer]
    except KeyError:
        raise KeyError(f"unknown scorer {scorer!r}; registered: {', '.join(sorted(SCORERS))}") from None
    return as_map_stack(score(moments), moments)


def top_indices(score_N: Tensor, count: int) -> Tensor:
    """Positions of the ``count`` highest scores, ties broken by position, in increasing position order.

    The same set as a stable argsort of -score, without sorting all N (a volume can hold 10⁸ voxels).
    """
    flat_N = score_N.reshape(-1)
    count = min(count, flat_N.numel())
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    kth = torch.topk(flat_N, count).values[-1]
    above = torch.nonzero(flat_N > kth).flatten()
    tied = torch.nonzero(flat_N == kth).flatten()[: count - above.numel()]
    return torch.sort(torch.cat([above, tied])).values


def top_sites(moments: Moments, region: tuple[slice, ...], sites: int) -> Tensor:
    """A unit's V most uncertain voxels by BALD (ties by position), in position order: sites_V_3 (volume coordinates).

    ``region`` is the unit's box (slices with explicit or open bounds) on the volume of ``moments``.
    """
    bounds = [s.indices(n)[:2] for s, n in zip(region, moments.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in bounds)
    score_d_h_w = bald(moments.crop(box))
    local_V = top_indices(score_d_h_w, sites)
    coordinates_V_3 = torch.stack(torch.unravel_index(local_V, score_d_h_w.shape), dim=1)
    return coordinates_V_3 + torch.tensor([a for a, _ in bounds], dtype=torch.long)


def gather_sites(probs_K_C_D_H_W: Tensor, sites_V_3: Tensor) -> Tensor:
    """The K samples' probabilities at the sites: probs_K_V_C (float64), for volumes held whole in memory."""
    d, h, w = sites_V_3.unbind(dim=1)
    return probs_K_C_D_H_W[:, :, d, h, w].permute(0, 2, 1).double()


SKETCHES: dict[str, SiteChooser] = {"sites": top_sites}
"""Unit sketches a strategy names (``registry.Strategy.sketch``). ``sites``: the K×V×C probabilities (float64) of the
unit's V highest-BALD voxels; the chooser picks the voxels from the moments, and a second sliding-window pass
(``sliding.site_probs``) or :func:`gather_sites` reads their samples."""


def make_reduction(name: str, top_q: float = 0.05) -> Reduction:
    """The reduction called ``name`` (``mean``, ``top_q``, ``foreground`` or ``sum``)."""
    if name == "mean":
        return reduce_mean
    if name == "top_q":
        return lambda score, probs: reduce_top_q(score, probs, top_q)
    if name == "foreground":
        return reduce_foreground
    if name == "sum":
        return reduce_sum
    raise ValueError(f"unknown reduction {name!r}; valid: mean, top_q, foreground, sum")
