"""Pseudo-labels: the unlabelled voxels of partly labelled cases learn from a teacher's confident predictions.

Self-training with a confidence threshold (Lee, ICML-W 2013; FixMatch's threshold, Sohn et al., NeurIPS 2020), the
teacher being the previous round's model: its class probabilities are predicted once per round (dropout off), and
a voxel outside every labelled unit takes the teacher's class where the top probability reaches the threshold,
else stays ``IGNORE``. Labels the annotator gave are never overwritten. The cost is one sliding-window prediction
per labelled case and no extra training; a whole-volume label has nothing to fill. With ``train.pseudo_label_pool``
every case nobody labelled trains too, on the teacher's confident voxels alone (:func:`pseudo_labelled_case`); its
label is written to a ``.npy`` file and read memory-mapped, so a pool of large scans does not fill the memory.
"""

from __future__ import annotations

from pathlib import Path

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


def pseudo_labelled_case(
    image_C_D_H_W: npt.NDArray[np.float32],
    teacher_probs_C_D_H_W: npt.NDArray[np.float32],
    threshold: float,
    store: Path,
) -> Example:
    """An unlabelled case as a training example: the teacher's class where its top probability reaches
    ``threshold``, ``IGNORE`` elsewhere; the label is saved to ``store`` (``.npy``) and opened memory-mapped."""
    unlabelled = np.full(teacher_probs_C_D_H_W.shape[1:], IGNORE, dtype=np.uint8)
    store.parent.mkdir(parents=True, exist_ok=True)
    np.save(store, pseudo_label_map(unlabelled, teacher_probs_C_D_H_W, threshold))
    label = np.load(store, mmap_mode="r")
    whole = ((0, label.shape[0]), (0, label.shape[1]), (0, label.shape[2]))
    return Example(image_C_D_H_W, label, (whole,))
