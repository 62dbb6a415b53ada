"""Pseudo-labels: the unlabelled voxels of partly labelled cases learn from a teacher's confident predictions.

Self-training with a confidence threshold (Lee, ICML-W 2013; FixMatch's threshold, Sohn et al., NeurIPS 2020), the
teacher being the previous round's model: its class probabilities are predicted once per round (dropout off), and
a voxel outside every labelled unit takes the teacher's class where the top probability reaches the threshold,
else stays ``IGNORE``. Labels the annotator gave are never overwritten. All of this reads only the teacher's
:class:`TeacherVote` (its class and that class's probability per voxel). The cost is one sliding-window prediction
per labelled case and round and no extra training; a whole-volume label has nothing to fill. With
``train.pseudo_label_pool`` every case nobody labelled trains too, on the teacher's confident voxels alone
(:func:`pseudo_labelled_case`); its label is written to a ``.npy`` file and read memory-mapped, so a pool of large
scans does not fill the memory.

With ``train.pseudo_label_calibrate`` the threshold is checked every round against labels the teacher never saw: the
units labelled in this round. A threshold τ passes when, on their voxels where the teacher is at least τ sure, its
class agrees with the annotator's at Dice ≥ the configured threshold for every foreground class (a class with no
such voxel on either side cannot disagree). The round uses the lowest passing τ of :func:`threshold_ladder`, or no
pseudo-labels when none passes (:func:`calibrated_threshold`). The check counts a teacher's confident false
negatives (a foreground voxel it calls background), which a per-class precision would miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from activeseg.acquisition.units import IGNORE
from activeseg.artifacts import write_atomic
from activeseg.engine.patches import Example


@dataclass(frozen=True)
class TeacherVote:
    """A teacher's prediction as pseudo-labels read it: its class and that class's probability at every voxel (5
    bytes a voxel, whatever the number of classes)."""

    class_D_H_W: npt.NDArray[np.uint8]
    top_D_H_W: npt.NDArray[np.float32]

    @classmethod
    def of(cls, probs_C_D_H_W: npt.NDArray[np.float32]) -> TeacherVote:
        return cls(probs_C_D_H_W.argmax(axis=0).astype(np.uint8), probs_C_D_H_W.max(axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.class_D_H_W.shape)

    def save(self, folder: Path) -> None:
        """Write ``class.npy`` and ``top.npy`` into ``folder``, each atomically (``top.npy`` last)."""
        write_atomic(folder / "class.npy", lambda handle: np.save(handle, self.class_D_H_W))
        write_atomic(folder / "top.npy", lambda handle: np.save(handle, self.top_D_H_W))

    @classmethod
    def load(cls, folder: Path) -> TeacherVote | None:
        """The vote saved in ``folder``, memory-mapped; None if it was never completely saved."""
        if not (folder / "top.npy").exists():
            return None
        return cls(np.load(folder / "class.npy", mmap_mode="r"), np.load(folder / "top.npy", mmap_mode="r"))


def pseudo_label_map(label_D_H_W: npt.NDArray[np.uint8], vote: TeacherVote, threshold: float) -> npt.NDArray[np.uint8]:
    """``label_D_H_W`` with each ``IGNORE`` voxel set to the teacher's class where its top probability reaches
    ``threshold``."""
    if vote.shape != label_D_H_W.shape:
        raise ValueError(f"teacher vote {vote.shape} does not match label {label_D_H_W.shape}")
    fill = (label_D_H_W == IGNORE) & (vote.top_D_H_W >= threshold)
    return np.where(fill, vote.class_D_H_W, label_D_H_W).astype(np.uint8)


def with_pseudo_labels(example: Example, vote: TeacherVote, threshold: float) -> Example:
    """The example trained on its labels plus the teacher's confident voxels; patches may be centred anywhere in
    the volume (one box that covers it), and the loss stays the partial-label one."""
    if example.boxes is None:
        return example  # a whole-volume label: nothing to fill
    label = pseudo_label_map(np.asarray(example.label_D_H_W), vote, threshold)
    whole = ((0, example.shape[0]), (0, example.shape[1]), (0, example.shape[2]))
    return Example(example.image_C_D_H_W, label, (whole,))


def pseudo_labelled_case(
    image_C_D_H_W: npt.NDArray[np.float32], vote: TeacherVote, threshold: float, store: Path
) -> Example:
    """An unlabelled case as a training example: the teacher's class where its top probability reaches
    ``threshold``, ``IGNORE`` elsewhere; the label is saved to ``store`` (``.npy``) and opened memory-mapped."""
    unlabelled = np.full(vote.shape, IGNORE, dtype=np.uint8)
    store.parent.mkdir(parents=True, exist_ok=True)
    np.save(store, pseudo_label_map(unlabelled, vote, threshold))
    label = np.load(store, mmap_mode="r")
    whole = ((0, label.shape[0]), (0, label.shape[1]), (0, label.shape[2]))
    return Example(image_C_D_H_W, label, (whole,))


LADDER_FRACTIONS = (1.0, 0.5, 0.2, 0.1, 0.02)
"""The calibration ladder as fractions of the configured 1 - threshold (0.95: 0.95, 0.975, 0.99, 0.995, 0.999)."""


def threshold_ladder(threshold: float) -> tuple[float, ...]:
    """The thresholds a calibrated round may use, lowest first: 1 - (1 - threshold) · f for f in LADDER_FRACTIONS."""
    return tuple(1.0 - (1.0 - threshold) * f for f in LADDER_FRACTIONS)


def agreement_counts(
    vote: TeacherVote,
    label_D_H_W: npt.NDArray[np.uint8],
    checked_D_H_W: npt.NDArray[np.bool_],
    thresholds: Sequence[float],
    classes: int,
) -> npt.NDArray[np.int64]:
    """counts_T_3_C: for each threshold and class, over the checked voxels where the teacher's top probability
    reaches the threshold, the voxels both call the class, the teacher calls it, and the annotator calls it."""
    checked_D_H_W = checked_D_H_W & (label_D_H_W != IGNORE)
    top_N = vote.top_D_H_W[checked_D_H_W]
    teacher_N = vote.class_D_H_W[checked_D_H_W].astype(np.int64)
    annotator_N = label_D_H_W[checked_D_H_W].astype(np.int64)
    counts_T_3_C = np.zeros((len(thresholds), 3, classes), dtype=np.int64)
    for t, threshold in enumerate(thresholds):
        sure_N = top_N >= threshold
        both_N = sure_N & (teacher_N == annotator_N)
        counts_T_3_C[t, 0] = np.bincount(annotator_N[both_N], minlength=classes)
        counts_T_3_C[t, 1] = np.bincount(teacher_N[sure_N], minlength=classes)
        counts_T_3_C[t, 2] = np.bincount(annotator_N[sure_N], minlength=classes)
    return counts_T_3_C


def calibrated_threshold(
    counts_T_3_C: npt.NDArray[np.int64], thresholds: Sequence[float], target: float
) -> tuple[float | None, npt.NDArray[np.float64]]:
    """The lowest threshold whose confident voxels reach Dice ≥ ``target`` in every foreground class, and dice_T_C
    (NaN where a class has no confident voxel on either side). None if no threshold passes, or if the annotator's
    labels hold no foreground among the voxels confident at the lowest threshold: nothing to check against."""
    both, teacher, annotator = counts_T_3_C[:, 0], counts_T_3_C[:, 1], counts_T_3_C[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice_T_C = np.where(teacher + annotator > 0, 2.0 * both / (teacher + annotator), np.nan)
    if annotator[0, 1:].sum() == 0:
        return None, dice_T_C
    for t, threshold in enumerate(thresholds):
        foreground = dice_T_C[t, 1:]
        if np.all(np.isnan(foreground) | (foreground >= target)):
            return float(threshold), dice_T_C
    return None, dice_T_C
