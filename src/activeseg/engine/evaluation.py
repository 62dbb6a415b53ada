"""Evaluation: Dice of the round's model on fully labelled test (or validation) cases, on each image's own grid.

Every case is predicted by sliding windows on its planned grid, its class probabilities are brought back to the
native grid (linear, through the case's geometry; nnU-Net's export), and the argmax there is compared with the label
file. A class absent from a
case's reference has no Dice in that case (MONAI's ``ignore_empty``); a class absent from every case of the split
has none at all, and a round whose mean is undefined is an error that says why instead of a silent 0 or NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from torch import nn

from activeseg.config import InferenceConfig
from activeseg.data.splits import RunData
from activeseg.engine.inference import predict_native_label
from activeseg.progress import Reporter

Progress = Callable[[int], None]


class EvaluationError(RuntimeError):
    """An evaluation whose Dice is undefined (no foreground to compare with)."""


def dice_per_class(prediction: npt.NDArray[Any], reference: npt.NDArray[Any], num_classes: int) -> list[float]:
    """Dice of each foreground class 1..C-1 (NaN where the reference has none of it), from one confusion count."""
    pairs = reference.astype(np.int64).reshape(-1) * num_classes + prediction.astype(np.int64).reshape(-1)
    confusion = np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    out = []
    for c in range(1, num_classes):
        truth, predicted, both = confusion[c].sum(), confusion[:, c].sum(), confusion[c, c]
        out.append(float("nan") if truth == 0 else float(2 * both / (truth + predicted)))
    return out


@dataclass(frozen=True)
class Evaluation:
    """Per-class Dice over a split's cases (foreground classes only) and its mean."""

    dice_per_class: dict[int, float]
    mean_foreground_dice: float
    per_case: dict[str, list[float]]


def evaluate(
    model: nn.Module,
    data: RunData,
    cases: Sequence[str],
    inference: InferenceConfig,
    amp: bool = False,
    progress: Progress | None = None,
) -> Evaluation:
    """Dice per foreground class on the native grid of every case (see the module docstring)."""
    per_case: dict[str, list[float]] = {}
    roi = data.plan.patch_size
    for case_id in cases:
        native = predict_native_label(model, data.image(case_id), data.geometry(case_id), roi, inference, amp)
        per_case[case_id] = dice_per_class(native, data.native_label(case_id), data.num_classes)
        if progress:
            progress(1)
    table = np.array(list(per_case.values()), dtype=np.float64).reshape(len(per_case), data.num_classes - 1)
    defined = ~np.isnan(table).all(axis=0)
    if not defined.any():
        raise EvaluationError(
            f"no case of the {len(per_case)} evaluated has any foreground voxel, so Dice is undefined; "
            "use a split (data.split_seed, data.test_size) or a test set (--test-data) with labelled structures"
        )
    per_class = np.full(table.shape[1], np.nan)
    per_class[defined] = np.nanmean(table[:, defined], axis=0)
    return Evaluation(
        dice_per_class={c + 1: float(v) for c, v in enumerate(per_class)},
        mean_foreground_dice=float(np.nanmean(per_class)),
        per_case=per_case,
    )


def evaluate_on(
    model: nn.Module,
    data: RunData,
    inference: InferenceConfig,
    amp: bool,
    reporter: Reporter,
    r: int | str,
    split: Literal["test", "validation"] = "test",
) -> Evaluation:
    """Dice on every case of the test (or validation) split: ground truth, never through the oracle."""
    dataset = data.test if split == "test" else data.validation
    assert dataset is not None, f"no {split} split"
    with reporter.progress(f"round {r}: evaluating on {split}", len(dataset.ids)) as advance:
        return evaluate(model, data, dataset.ids, inference, amp, advance)


def metrics_record(result: Evaluation, n_labelled: int, round_index: int | None) -> dict[str, Any]:
    """The JSON form of an evaluation: deterministic content only (no timings). NaN (a class absent from the
    split) is written as null."""

    def finite(value: float) -> float | None:
        return None if np.isnan(value) else value

    dice: dict[str, float | None] = {f"class_{c}": finite(v) for c, v in result.dice_per_class.items()}
    dice["mean_foreground"] = result.mean_foreground_dice
    per_case = {k: [finite(v) for v in row] for k, row in result.per_case.items()}
    return {"round": round_index, "n_labelled": n_labelled, "dice": dice, "per_case": per_case}
