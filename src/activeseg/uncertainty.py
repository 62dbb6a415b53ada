"""MC-dropout predictions, streamed one volume at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from activeseg.model import enable_mc_dropout
from activeseg.scorers import Reduction, as_map_stack


@torch.no_grad()
def mc_dropout_probs(
    model: nn.Module, image_C_D_H_W: Tensor, samples: int, batch_size: int, seed: int, amp: bool = False
) -> Tensor:
    """K = ``samples`` stochastic softmax predictions for one volume: probs_K_C_D_H_W (float32, on CPU).

    Dropout stays on, normalisation layers are in eval mode, and the passes run ``batch_size`` at a time (batched
    passes are 2-3x faster than single ones on CPU). ``seed`` fixes the dropout masks, so a volume's score does not
    depend on which volumes were scored before it.
    """
    enable_mc_dropout(model)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    image = image_C_D_H_W.to(device).unsqueeze(0)
    chunks = []
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        with torch.autocast(device.type, enabled=amp):
            logits = model(image.expand(n, *image.shape[1:]))
        chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    model.eval()
    return torch.cat(chunks)


@dataclass(frozen=True)
class VolumeScore:
    """One pool volume's acquisition scores: one per voxel map of the strategy (the first is the unit's score)."""

    case_id: str
    scores: tuple[float, ...]


def score_pool(
    model: nn.Module,
    volumes: Iterable[tuple[str, np.ndarray]],
    scorer: Callable[[Tensor], Tensor],
    reduction: Reduction,
    samples: int,
    batch_size: int,
    seed_for: Callable[[str], int],
    amp: bool = False,
) -> Iterator[VolumeScore]:
    """Score volumes one at a time; only the scalars outlive each volume, so memory is flat in pool size.

    ``scorer`` maps probs_K_C_D_H_W to score_M_D_H_W; each of the M maps is reduced to one number.
    """
    for case_id, image_C_D_H_W in volumes:
        probs_K_C_D_H_W = mc_dropout_probs(
            model, torch.from_numpy(image_C_D_H_W), samples, batch_size, seed_for(case_id), amp
        )
        mean_probs_C_D_H_W = probs_K_C_D_H_W.mean(dim=0)
        score_M_D_H_W = as_map_stack(scorer(probs_K_C_D_H_W), probs_K_C_D_H_W)
        yield VolumeScore(case_id, tuple(reduction(score_D_H_W, mean_probs_C_D_H_W) for score_D_H_W in score_M_D_H_W))
