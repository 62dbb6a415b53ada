"""Pure uncertainty scorers and reductions.

Shapes are in the names: ``probs_K_C_D_H_W`` holds K stochastic softmax predictions (MC dropout passes) over C classes
for one volume. A scorer maps it to a voxel map ``score_D_H_W``; a reduction maps that map to one number per query unit
(here: a volume). None of these functions mutates its input. Definitions follow ``shared/docs/anchors.md``:

- predictive entropy  PE  = H[mean_k p_k]
- expected entropy    EE  = mean_k H[p_k]
- BALD (mutual information) = PE - EE >= 0  (Houlsby et al. 2011; Gal et al., ICML 2017)
- variance            mean_c var_k p_k(c)   (population variance over the K samples)
- margin              1 - (p̄_(1) - p̄_(2)), the two largest mean class probabilities
- class-specific PE   PE · p̄_c, one map per class (ClaSP PE, Lüth et al., TMLR 2026)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

VoxelScorer = Callable[[Tensor], Tensor]
"""probs_K_C_D_H_W -> score_D_H_W"""

Reduction = Callable[[Tensor, Tensor], float]
"""(score_D_H_W, mean_probs_C_D_H_W) -> one score for the unit"""


def _entropy(probs_C: Tensor, dim: int) -> Tensor:
    """Shannon entropy in nats along ``dim``, with 0 log 0 = 0."""
    entropy: Tensor = -torch.special.xlogy(probs_C, probs_C).sum(dim=dim)
    return entropy


def predictive_entropy(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Entropy of the mean prediction, per voxel: H[p̄]."""
    return _entropy(probs_K_C_D_H_W.mean(dim=0), dim=0)


def expected_entropy(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Mean entropy of the individual predictions, per voxel: mean_k H[p_k]."""
    return _entropy(probs_K_C_D_H_W, dim=1).mean(dim=0)


def bald(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Mutual information between the prediction and the model parameters, per voxel: PE - EE.

    Mathematically non-negative (Jensen); clamped at 0 to remove float round-off.
    """
    return (predictive_entropy(probs_K_C_D_H_W) - expected_entropy(probs_K_C_D_H_W)).clamp_min(0.0)


def variance(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Spread of the K predictions, per voxel: the class-averaged population variance over samples."""
    return probs_K_C_D_H_W.var(dim=0, correction=0).mean(dim=0)


def margin(probs_K_C_D_H_W: Tensor) -> Tensor:
    """One minus the gap between the two most probable classes of the mean prediction (1 = a tie)."""
    top2_2_D_H_W = torch.topk(probs_K_C_D_H_W.mean(dim=0), k=2, dim=0).values
    return 1.0 - (top2_2_D_H_W[0] - top2_2_D_H_W[1])


def class_predictive_entropy(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Class-specific uncertainty PE · p̄_c for every class: score_C_D_H_W (ClaSP PE, Lüth et al., TMLR 2026)."""
    mean_C_D_H_W = probs_K_C_D_H_W.mean(dim=0)
    return _entropy(mean_C_D_H_W, dim=0).unsqueeze(0) * mean_C_D_H_W


def clasp_maps(probs_K_C_D_H_W: Tensor) -> Tensor:
    """Plain PE followed by PE · p̄_c for each foreground class c: score_M_D_H_W with M = C (ClaSP PE)."""
    class_maps_C_D_H_W = class_predictive_entropy(probs_K_C_D_H_W)
    return torch.cat([predictive_entropy(probs_K_C_D_H_W).unsqueeze(0), class_maps_C_D_H_W[1:]])


def as_map_stack(score: Tensor, probs_K_C_D_H_W: Tensor) -> Tensor:
    """A scorer's output as a stack of voxel maps: score_D_H_W becomes score_1_D_H_W; score_M_D_H_W stays."""
    return score.unsqueeze(0) if score.dim() == probs_K_C_D_H_W.dim() - 2 else score


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
    "expected_entropy": expected_entropy,
    "bald": bald,
    "variance": variance,
    "margin": margin,
    "clasp": clasp_maps,
}
"""The voxel scorers a strategy names (``registry.Strategy.scorer``); ``clasp`` gives M = C maps, the others one."""


def strategy_maps(scorer: str, probs_K_C_D_H_W: Tensor) -> Tensor:
    """The voxel maps of the scorer called ``scorer``, as a stack: score_M_D_H_W."""
    try:
        score = SCORERS[scorer]
    except KeyError:
        raise KeyError(f"unknown scorer {scorer!r}; registered: {', '.join(sorted(SCORERS))}") from None
    return as_map_stack(score(probs_K_C_D_H_W), probs_K_C_D_H_W)


def site_sketch(probs_K_C_D_H_W: Tensor, sites: int) -> np.ndarray:
    """The unit's V most uncertain voxels (by BALD; ties by position): their probabilities, probs_K_V_C (float64)."""
    score_V = bald(probs_K_C_D_H_W).flatten()
    top = np.sort(np.argsort(-score_V.numpy(), kind="stable")[: min(sites, score_V.numel())])
    probs_K_C_N = probs_K_C_D_H_W.flatten(start_dim=2).double().numpy()
    return np.ascontiguousarray(probs_K_C_N[:, :, top].transpose(0, 2, 1))


SKETCHES: dict[str, Callable[[Tensor, int], np.ndarray]] = {"sites": site_sketch}
"""Unit summaries a strategy names (``registry.Strategy.sketch``): (probs_K_C_D_H_W, sites) -> a small array."""


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
