"""Pseudo-labels: the unlabelled voxels of partly labelled cases learn from a teacher's confident predictions.

Self-training with a confidence threshold (Lee, ICML-W 2013; FixMatch's threshold, Sohn et al., NeurIPS 2020), the
teacher being the previous round's model: its class probabilities are predicted once per round (dropout off), and
a voxel outside every labelled unit takes the teacher's class where the top probability reaches the threshold,
else stays ``IGNORE``. Labels the annotator gave are never overwritten. The cost is one sliding-window prediction
per labelled case and no extra training; a whole-volume label has nothing to fill.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from activeseg.acquisition.units import IGNORE
from activeseg.engine.patches import Example


def pseudo_label_map(
    label_D_H_W: npt.NDArray[np.uint8], teacher_probs_C_D_H_W: npt.NDArray[np.float32], threshold: float
) -> npt.NDArray[np.uint8]:
    """``label_D_H_W`` with each ``IGNORE`` voxel set to the teacher's class where its top probability reaches
    ``threshold``."""
    if teacher_probs_C_D_H_W.shape[1:] != label_D_H_W.shape:
        raise ValueError(f"teacher probabilities {teacher_probs_C_D_H_W.shape} do not match label {label_D_H_W.shape}")
    confident_D_H_W = teacher_probs_C_D_H_W.max(axis=0) >= threshold
    teacher_D_H_W = teacher_probs_C_D_H_W.argmax(axis=0).astype(np.uint8)
    fill = (label_D_H_W == IGNORE) & confident_D_H_W
    return np.where(fill, teacher_D_H_W, label_D_H_W).astype(np.uint8)


def with_pseudo_labels(example: Example, teacher_probs_C_D_H_W: npt.NDArray[np.float32], threshold: float) -> Example:
    """The example trained on its labels plus the teacher's confident voxels; patches may be centred anywhere in
    the volume (one box that covers it), and the loss stays the partial-label one."""
    if example.boxes is None:
        return example  # a whole-volume label: nothing to fill
    label = pseudo_label_map(np.asarray(example.label_D_H_W), teacher_probs_C_D_H_W, threshold)
    whole = ((0, example.shape[0]), (0, example.shape[1]), (0, example.shape[2]))
    return Example(example.image_C_D_H_W, label, (whole,))
