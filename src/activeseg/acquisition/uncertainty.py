"""Uncertainty sources (K stochastic predictions per volume), and pool scoring streamed one volume at a time.

A *sampler* maps (image_C_D_H_W, seed) to probs_K_C_D_H_W. Three are built here:

- MC dropout (Gal & Ghahramani, ICML 2016): dropout on, normalisation in eval mode, K passes in batches.
- Test-time augmentation (Wang et al., Neurocomputing 2019): K augmented copies (random flips on the allowed axes,
  small intensity scale and shift; the first copy is the plain image), dropout off, each prediction flipped back
  before they are combined.
- Deep ensembles (Lakshminarayanan et al., NeurIPS 2017): one deterministic prediction (dropout off) from each of
  K independently seeded models. The loop trains the extra members and accounts for their training time.

Any sampler combines with any scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from activeseg.acquisition.scorers import Reduction, as_map_stack

Sampler = Callable[[Tensor, int], Tensor]
"""(image_C_D_H_W, seed) -> probs_K_C_D_H_W (float32, CPU)"""

Source = Literal["mc_dropout", "tta", "ensemble"]
SOURCES: tuple[Source, ...] = ("mc_dropout", "tta", "ensemble")


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode for everything (normalisation included) except dropout layers, which keep sampling."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()


def _batched_softmax(model: nn.Module, images_B_C_D_H_W: Tensor, batch_size: int, amp: bool) -> Tensor:
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, images_B_C_D_H_W.shape[0], batch_size):
        batch = images_B_C_D_H_W[start : start + batch_size].to(device)
        with torch.autocast(device.type, enabled=amp):
            logits = model(batch)
        chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(chunks)


@torch.no_grad()
def mc_dropout_probs(
    model: nn.Module, image_C_D_H_W: Tensor, samples: int, batch_size: int, seed: int, amp: bool = False
) -> Tensor:
    """K = ``samples`` stochastic softmax predictions for one volume: probs_K_C_D_H_W (float32, on CPU).

    Dropout stays on, normalisation layers are in eval mode, and the passes run ``batch_size`` at a time (batched
    passes are 2-3x faster than single ones on CPU). ``seed`` fixes the dropout masks, so a volume's score does
    not depend on which volumes were scored before it.
    """
    enable_mc_dropout(model)
    torch.manual_seed(seed)
    try:
        return _batched_softmax(
            model, image_C_D_H_W.unsqueeze(0).expand(samples, *image_C_D_H_W.shape), batch_size, amp
        )
    finally:
        model.eval()


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation: spatial axes to flip, then intensity * scale + shift."""

    flips: tuple[int, ...]
    scale: float
    shift: float


def draw_augmentations(samples: int, flip_axes: Sequence[int], seed: int) -> list[Augmentation]:
    """K seeded augmentations; the first is the identity so the plain prediction is always among the samples."""
    rng = np.random.default_rng(seed)
    drawn = [Augmentation((), 1.0, 0.0)]
    for _ in range(samples - 1):
        flips = tuple(axis for axis in flip_axes if rng.random() < 0.5)
        drawn.append(Augmentation(flips, float(1.0 + rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))))
    return drawn


@torch.no_grad()
def tta_probs(
    model: nn.Module,
    image_C_D_H_W: Tensor,
    samples: int,
    batch_size: int,
    seed: int,
    flip_axes: Sequence[int],
    amp: bool = False,
) -> Tensor:
    """K predictions of augmented copies of one volume, each mapped back to the original frame: probs_K_C_D_H_W."""
    model.eval()
    augmentations = draw_augmentations(samples, flip_axes, seed)
    spatial = 1  # axis 0 of image_C_D_H_W is the channel
    copies = [
        torch.flip(image_C_D_H_W * a.scale + a.shift, [spatial + axis for axis in a.flips]) for a in augmentations
    ]
    probs_K_C_D_H_W = _batched_softmax(model, torch.stack(copies), batch_size, amp)
    return torch.stack(
        [
            torch.flip(p, [spatial + axis for axis in a.flips])
            for p, a in zip(probs_K_C_D_H_W, augmentations, strict=True)
        ]
    )


@torch.no_grad()
def ensemble_probs(models: Sequence[nn.Module], image_C_D_H_W: Tensor, amp: bool = False) -> Tensor:
    """One plain prediction per ensemble member (dropout off): probs_K_C_D_H_W with K = len(models)."""
    predictions = []
    for member in models:
        member.eval()
        predictions.append(_batched_softmax(member, image_C_D_H_W.unsqueeze(0), 1, amp)[0])
    return torch.stack(predictions)


def make_sampler(
    source: Source,
    model: nn.Module,
    samples: int,
    batch_size: int,
    flip_axes: Sequence[int],
    amp: bool,
    members: Sequence[nn.Module] = (),
) -> Sampler:
    """The uncertainty source called ``source`` bound to a trained model (and, for ``ensemble``, its other
    ``members``; K is then ``1 + len(members)``)."""
    if source == "mc_dropout":
        return lambda image, seed: mc_dropout_probs(model, image, samples, batch_size, seed, amp)
    if source == "tta":
        return lambda image, seed: tta_probs(model, image, samples, batch_size, seed, flip_axes, amp)
    if source == "ensemble":
        if not members:
            raise ValueError("an ensemble sampler needs at least one member besides the round model")
        return lambda image, seed: ensemble_probs([model, *members], image, amp)
    raise ValueError(f"unknown uncertainty source {source!r}; valid: {', '.join(SOURCES)}")


@dataclass(frozen=True)
class UnitScore:
    """One candidate unit's acquisition scores: one per voxel map of the strategy (the first is the unit's score)."""

    key: str
    """The unit key (the case id for a whole volume)."""
    scores: tuple[float, ...]
    sketch: np.ndarray | None = None
    """A small summary of the unit's K samples for joint selection (BatchBALD), when asked for."""


UnitSummary = Callable[[str, Tensor, Tensor], list[tuple[str, tuple[float, ...], tuple[slice, ...]]]]
"""(case id, score_M_D_H_W, mean_probs_C_D_H_W) -> [(unit key, unit scores, unit region)] for a volume's candidates"""


def score_pool(
    volumes: Iterable[tuple[str, np.ndarray]],
    sampler: Sampler,
    scorer: Callable[[Tensor], Tensor],
    reduction: Reduction,
    seed_for: Callable[[str], int],
    sketch: Callable[[Tensor], np.ndarray] | None = None,
    units: UnitSummary | None = None,
) -> Iterator[UnitScore]:
    """Score volumes one at a time; only the scalars outlive each volume, so memory is flat in pool size.

    ``scorer`` maps probs_K_C_D_H_W to score_D_H_W or score_M_D_H_W. By default each volume is one unit and each
    of its M maps is reduced to one number by ``reduction``; ``units`` instead turns a volume's maps into its
    candidate slices or patches (see ``units.unit_scores``), and ``sketch`` then summarises each unit's region.
    """
    everything: tuple[slice, ...] = (slice(None),) * 3
    for case_id, image_C_D_H_W in volumes:
        probs_K_C_D_H_W = sampler(torch.from_numpy(image_C_D_H_W), seed_for(case_id))
        mean_probs_C_D_H_W = probs_K_C_D_H_W.mean(dim=0)
        score_M_D_H_W = as_map_stack(scorer(probs_K_C_D_H_W), probs_K_C_D_H_W)
        if units is None:
            scores = tuple(reduction(score_D_H_W, mean_probs_C_D_H_W) for score_D_H_W in score_M_D_H_W)
            candidates = [(case_id, scores, everything)]
        else:
            candidates = units(case_id, score_M_D_H_W, mean_probs_C_D_H_W)
        for key, unit_scores, region in candidates:
            summary = sketch(probs_K_C_D_H_W[(slice(None), slice(None), *region)]) if sketch else None
            yield UnitScore(key, unit_scores, summary)
