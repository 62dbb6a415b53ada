"""Evaluation: Dice of the round's model on the fully labelled test (or validation) cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

from activeseg.data.splits import RunData
from activeseg.engine.training import Example, Progress
from activeseg.progress import Reporter


@torch.no_grad()
def predict(model: nn.Module, images_B_C_D_H_W: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Deterministic softmax probabilities (dropout off): probs_B_C_D_H_W on CPU."""
    model.eval()
    device = next(model.parameters()).device
    with torch.autocast(device.type, enabled=amp):
        logits = model(images_B_C_D_H_W.to(device))
    return torch.softmax(logits.float(), dim=1).cpu()


@dataclass(frozen=True)
class Evaluation:
    """Per-class Dice on the test split (foreground classes only) and its mean."""

    dice_per_class: dict[int, float]
    mean_foreground_dice: float
    per_case: dict[str, list[float]]


def evaluate(
    model: nn.Module,
    cases: Sequence[tuple[str, Example]],
    num_classes: int,
    batch_size: int,
    amp: bool = False,
    progress: Progress | None = None,
) -> Evaluation:
    """Dice per foreground class (MONAI ``DiceMetric``) over fully labelled test volumes."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    per_case: dict[str, list[float]] = {}
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        images = torch.stack([torch.from_numpy(image) for _, (image, _) in chunk])
        labels = torch.stack([torch.from_numpy(label[None]).long() for _, (_, label) in chunk])
        prediction = predict(model, images, amp).argmax(dim=1, keepdim=True)
        dice_B_F = torch.as_tensor(metric(one_hot(prediction, num_classes), one_hot(labels, num_classes)))
        for (case_id, _), row in zip(chunk, dice_B_F.tolist(), strict=True):
            per_case[case_id] = [float(v) for v in row]
        if progress:
            progress(len(chunk))
    table = np.array(list(per_case.values()), dtype=np.float64)
    per_class = np.nanmean(table, axis=0)
    return Evaluation(
        dice_per_class={c + 1: float(v) for c, v in enumerate(per_class)},
        mean_foreground_dice=float(np.nanmean(per_class)),
        per_case=per_case,
    )


def evaluate_on(
    model: nn.Module,
    data: RunData,
    batch_size: int,
    amp: bool,
    reporter: Reporter,
    r: int | str,
    split: Literal["test", "validation"] = "test",
) -> Evaluation:
    """Dice on every case of the test (or validation) split: ground truth, never through the oracle."""
    dataset = data.test if split == "test" else data.validation
    assert dataset is not None, f"no {split} split"
    cases = [(c, (data.image(c), data.ground_truth(c))) for c in dataset.ids]
    with reporter.progress(f"round {r}: evaluating on {split}", len(cases)) as advance:
        return evaluate(model, cases, data.num_classes, batch_size, amp, advance)


def metrics_record(result: Evaluation, n_labelled: int, round_index: int | None) -> dict[str, Any]:
    """The JSON form of an evaluation: deterministic content only (no timings)."""
    dice = {f"class_{c}": v for c, v in result.dice_per_class.items()}
    dice["mean_foreground"] = result.mean_foreground_dice
    return {"round": round_index, "n_labelled": n_labelled, "dice": dice, "per_case": result.per_case}
