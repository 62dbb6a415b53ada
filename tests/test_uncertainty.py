"""Uncertainty sources: MC dropout keeps dropout on; test-time augmentation maps its predictions back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from activeseg.acquisition.scorers import bald
from activeseg.acquisition.uncertainty import (
    draw_augmentations,
    ensemble_probs,
    make_sampler,
    mc_dropout_probs,
    tta_probs,
)
from activeseg.config import ModelConfig
from activeseg.engine.model import build_model


def pointwise_model() -> nn.Module:
    """Output at a voxel depends only on the input there, so it commutes with flips."""
    torch.manual_seed(0)
    return nn.Conv3d(1, 3, kernel_size=1)


def test_tta_predictions_are_mapped_back_to_the_original_frame() -> None:
    model = pointwise_model()
    image = torch.randn(1, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    augmentations = draw_augmentations(8, (0, 1, 2), seed=3)
    assert any(a.flips for a in augmentations)  # the test would be vacuous without flips
    probs = tta_probs(model, image, samples=8, batch_size=3, seed=3, flip_axes=(0, 1, 2))
    for p, a in zip(probs, augmentations, strict=True):
        expected = torch.softmax(model((image * a.scale + a.shift).unsqueeze(0)), dim=1)[0]
        torch.testing.assert_close(p, expected)


def test_tta_first_sample_is_the_plain_prediction_and_is_seeded() -> None:
    model = build_model(ModelConfig(channels=(4, 8), strides=(2,)), 3)
    image = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    probs = tta_probs(model, image, samples=4, batch_size=4, seed=9, flip_axes=(0,))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(probs[0], torch.softmax(model(image[None]), dim=1)[0])
    torch.manual_seed(123)  # TTA does not depend on torch's global RNG: dropout is off
    torch.testing.assert_close(tta_probs(model, image, samples=4, batch_size=2, seed=9, flip_axes=(0,)), probs)


def test_identical_augmentations_give_zero_bald() -> None:
    model = pointwise_model()
    image = torch.randn(1, 4, 4, 4)
    probs = tta_probs(model, image, samples=1, batch_size=1, seed=0, flip_axes=(0,))
    assert float(bald(probs.expand(4, *probs.shape[1:])).max()) < 1e-6


def test_mc_dropout_varies_across_passes_and_is_seeded() -> None:
    model = build_model(ModelConfig(channels=(4, 8), strides=(2,), dropout=0.3), 3)
    image = torch.randn(1, 8, 8, 8)
    probs = mc_dropout_probs(model, image, samples=4, batch_size=2, seed=5)
    assert probs.shape == (4, 3, 8, 8, 8)
    assert not torch.equal(probs[0], probs[1])
    torch.manual_seed(99)  # the seed argument, not the global state, fixes the masks (for a given batch size)
    torch.testing.assert_close(mc_dropout_probs(model, image, samples=4, batch_size=2, seed=5), probs)
    assert not model.training  # left in eval mode


def test_ensemble_gives_one_plain_prediction_per_member_in_order() -> None:
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(build_model(ModelConfig(channels=(4, 8), strides=(2,), dropout=0.5), 3))
    image = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    probs = make_sampler("ensemble", members[0], 99, 99, (0,), amp=False, members=members[1:])(image, 0)
    assert probs.shape == (3, 3, 8, 8, 8)
    for member, p in zip(members, probs, strict=True):
        member.eval()  # dropout off: each member's prediction is deterministic
        with torch.no_grad():
            torch.testing.assert_close(p, torch.softmax(member(image[None]), dim=1)[0])
    assert float(bald(probs).mean()) > 0  # independently seeded members disagree
    torch.testing.assert_close(ensemble_probs(members, image), probs)
    same = ensemble_probs([members[0]] * 3, image)
    assert float(bald(same).max()) < 1e-6  # identical members: no epistemic uncertainty


def test_unknown_source_and_memberless_ensemble_are_rejected() -> None:
    with pytest.raises(ValueError, match="valid: mc_dropout, tta, ensemble"):
        make_sampler("bootstrap", pointwise_model(), 2, 2, (0,), amp=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one member"):
        make_sampler("ensemble", pointwise_model(), 2, 2, (0,), amp=False)
