"""Pseudo-labels: the teacher fills only unlabelled voxels, only where it is confident; whole volumes are left alone."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.acquisition.units import IGNORE
from activeseg.config import ConfigError, config_from_dict
from activeseg.engine.patches import Example
from activeseg.engine.pseudo import pseudo_label_map, with_pseudo_labels


def teacher(*columns: tuple[float, float, float]) -> np.ndarray:
    """Class probabilities of a 1×1×N volume, one (p0, p1, p2) per voxel: probs_C_D_H_W."""
    return np.array(columns, dtype=np.float32).T.reshape(3, 1, 1, len(columns))


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
    with pytest.raises(ValueError, match="do not match"):
        pseudo_label_map(label, probs[:, :, :, :4], 0.9)


def test_partly_labelled_examples_train_on_the_whole_volume_and_whole_volumes_are_untouched() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    partial = np.full_like(truth, IGNORE)
    partial[:2] = truth[:2]  # the annotator gave the first two slices
    probs = np.stack([1.0 - truth, truth, np.zeros_like(truth)]).astype(np.float32) * 0.96 + 0.01  # a sure teacher
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
