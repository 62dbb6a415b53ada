"""Pseudo-labels: the teacher fills only unlabelled voxels, only where it is confident; whole volumes are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.acquisition.units import IGNORE
from activeseg.config import ConfigError, config_from_dict
from activeseg.engine.patches import Example
from activeseg.engine.pseudo import (
    TeacherVote,
    agreement_counts,
    calibrated_threshold,
    pseudo_label_map,
    threshold_ladder,
    with_pseudo_labels,
)


def teacher(*columns: tuple[float, float, float]) -> TeacherVote:
    """The vote of a teacher predicting a 1×1×N volume, one (p0, p1, p2) per voxel."""
    return TeacherVote.of(np.array(columns, dtype=np.float32).T.reshape(3, 1, 1, len(columns)))


def test_a_vote_is_the_argmax_and_its_probability_and_round_trips_memory_mapped(tmp_path: Path) -> None:
    probs = np.random.default_rng(0).dirichlet([1.0, 1.0, 1.0], size=(2, 3, 4)).transpose(3, 0, 1, 2)
    vote = TeacherVote.of(probs.astype(np.float32))
    np.testing.assert_array_equal(vote.class_D_H_W, probs.argmax(axis=0))
    np.testing.assert_array_equal(vote.top_D_H_W, probs.astype(np.float32).max(axis=0))
    assert vote.class_D_H_W.dtype == np.uint8 and vote.top_D_H_W.dtype == np.float32 and vote.shape == (2, 3, 4)
    assert TeacherVote.load(tmp_path / "case") is None  # never saved
    vote.save(tmp_path / "case")
    again = TeacherVote.load(tmp_path / "case")
    assert again is not None and isinstance(again.top_D_H_W, np.memmap)
    np.testing.assert_array_equal(again.class_D_H_W, vote.class_D_H_W)
    np.testing.assert_array_equal(again.top_D_H_W, vote.top_D_H_W)
    (tmp_path / "case" / "top.npy").unlink()  # a save cut short before its last file: not a vote
    assert TeacherVote.load(tmp_path / "case") is None


def test_only_unlabelled_voxels_take_the_teachers_confident_class() -> None:
    label = np.array([[[1, IGNORE, IGNORE, IGNORE, 2]]], dtype=np.uint8)
    probs = teacher(
        (0.01, 0.01, 0.98),  # labelled 1: the annotator wins even against a sure teacher
        (0.05, 0.90, 0.05),  # unlabelled, 0.90 >= 0.9: class 1
        (0.12, 0.00, 0.88),  # unlabelled, 0.88 < 0.9: stays IGNORE
        (0.95, 0.05, 0.00),  # unlabelled, sure background: 0
        (0.99, 0.01, 0.00),  # labelled 2: kept
    )
    expected = np.array([[[1, 1, IGNORE, 0, 2]]], dtype=np.uint8)
    np.testing.assert_array_equal(pseudo_label_map(label, probs, 0.9), expected)
    np.testing.assert_array_equal(pseudo_label_map(label, probs, 0.999), label)  # nobody that sure: unchanged
    with pytest.raises(ValueError, match="does not match"):
        pseudo_label_map(label, TeacherVote(probs.class_D_H_W[:, :, :4], probs.top_D_H_W[:, :, :4]), 0.9)


def test_partly_labelled_examples_train_on_the_whole_volume_and_whole_volumes_are_untouched() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    partial = np.full_like(truth, IGNORE)
    partial[:2] = truth[:2]  # the annotator gave the first two slices
    probs = TeacherVote.of(np.stack([1.0 - truth, truth, np.zeros_like(truth)]).astype(np.float32) * 0.96 + 0.01)
    filled = with_pseudo_labels(Example(image, partial, (((0, 2), (0, 4), (0, 4)),)), probs, 0.95)
    np.testing.assert_array_equal(filled.label_D_H_W, truth)
    assert filled.boxes == (((0, 4), (0, 4), (0, 4)),)  # patches may now be centred anywhere
    assert len(filled.foreground[1]) == 8 and len(Example(image, partial).foreground[1]) == 4  # pseudo foreground
    whole = Example(image, truth)
    assert with_pseudo_labels(whole, probs, 0.95) is whole


def test_the_threshold_is_validated() -> None:
    assert config_from_dict({"train": {"pseudo_label_threshold": 0.95}}).train.pseudo_label_threshold == 0.95
    for bad in (0.3, 1.0):
        with pytest.raises(ConfigError, match=r"train\.pseudo_label_threshold: must be in"):
            config_from_dict({"train": {"pseudo_label_threshold": bad}})


def test_the_ladder_raises_the_threshold_towards_one() -> None:
    np.testing.assert_allclose(threshold_ladder(0.95), [0.95, 0.975, 0.99, 0.995, 0.999])
    np.testing.assert_allclose(threshold_ladder(0.5), [0.5, 0.75, 0.9, 0.95, 0.99])


def test_agreement_counts_only_checked_labelled_voxels_the_teacher_is_sure_of() -> None:
    label = np.array([[[0, 1, 1, 2, 2, 1, IGNORE]]], dtype=np.uint8)
    probs = teacher(
        (0.98, 0.01, 0.01),  # background, sure and right
        (0.97, 0.02, 0.01),  # anterior called background at 0.97: a confident false negative
        (0.01, 0.99, 0.00),  # anterior, sure and right
        (0.10, 0.05, 0.85),  # posterior, not sure at 0.95
        (0.00, 0.00, 1.00),  # posterior, sure and right
        (0.00, 1.00, 0.00),  # not checked (labelled in an earlier round)
        (0.00, 1.00, 0.00),  # checked but unlabelled: ignored
    )
    checked = np.array([[[True, True, True, True, True, False, True]]])
    counts = agreement_counts(probs, label, checked, [0.95, 0.975], 3)
    # threshold 0.95: sure voxels are 0-2 and 4; the teacher says 0, 0, 1, 2 and the annotator 0, 1, 1, 2
    np.testing.assert_array_equal(counts[0], [[1, 1, 1], [2, 1, 1], [1, 2, 1]])
    # threshold 0.975: voxel 1 (0.97) drops out, and with it the false negative
    np.testing.assert_array_equal(counts[1], [[1, 1, 1], [1, 1, 1], [1, 1, 1]])


def test_the_lowest_threshold_at_which_every_foreground_class_agrees_is_chosen() -> None:
    label = np.array([[[0, 1, 1, 2, 2]]], dtype=np.uint8)
    probs = teacher((0.98, 0.01, 0.01), (0.97, 0.02, 0.01), (0.01, 0.99, 0.00), (0.10, 0.05, 0.85), (0, 0, 1))
    checked = np.ones(label.shape, dtype=bool)
    ladder = threshold_ladder(0.95)
    counts = agreement_counts(probs, label, checked, ladder, 3)
    chosen, dice = calibrated_threshold(counts, ladder, 0.95)
    assert chosen == pytest.approx(0.975)  # at 0.95 anterior agrees at Dice 2·1/(1 + 2) = 0.67 only
    np.testing.assert_allclose(dice[0], [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(dice[1], [1.0, 1.0, 1.0])
    # a teacher wrong even when sure: no threshold passes, no pseudo-labels
    wrong = teacher((0.98, 0.01, 0.01), (1.0, 0, 0), (0, 0, 1.0), (0.10, 0.05, 0.85), (0, 0, 1))
    assert calibrated_threshold(agreement_counts(wrong, label, checked, ladder, 3), ladder, 0.95)[0] is None
    # nothing to check against: the checked voxels hold no foreground
    background = np.zeros(label.shape, dtype=np.uint8)
    assert calibrated_threshold(agreement_counts(probs, background, checked, ladder, 3), ladder, 0.95)[0] is None
    # a class with no sure voxel on either side cannot disagree (NaN Dice passes)
    only_posterior = np.array([[[0, 0, 0, 2, 2]]], dtype=np.uint8)
    sure = teacher((1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 1), (0, 0, 1))
    chosen, dice = calibrated_threshold(agreement_counts(sure, only_posterior, checked, ladder, 3), ladder, 0.95)
    assert chosen == pytest.approx(0.95) and np.isnan(dice[0, 1])


def test_calibration_needs_a_threshold() -> None:
    with pytest.raises(ConfigError, match="pseudo_label_calibrate"):
        config_from_dict({"train": {"pseudo_label_calibrate": True}})
