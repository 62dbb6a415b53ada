"""Mean teacher: the ramp, the consistency loss, the moving average, the unlabelled schedule and real training."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from activeseg.config import config_from_dict
from activeseg.engine.mean_teacher import (
    NOISE_CLIP,
    MeanTeacher,
    UnlabelledSchedule,
    consistency_loss,
    consistency_weight,
)
from activeseg.engine.model import build_model, network_plan
from activeseg.engine.patches import Example, crop_image
from activeseg.engine.training import train


def test_the_consistency_weight_ramps_up_over_the_first_40_percent_of_steps() -> None:
    assert consistency_weight(0, 1000) == pytest.approx(0.1 * math.exp(-5.0))
    assert consistency_weight(200, 1000) == pytest.approx(0.1 * math.exp(-5.0 * 0.25))  # t = 200 / 400
    assert consistency_weight(400, 1000) == pytest.approx(0.1)
    assert consistency_weight(999, 1000) == pytest.approx(0.1)
    weights = [consistency_weight(s, 1000) for s in range(1000)]
    assert all(a <= b for a, b in itertools.pairwise(weights))


def test_the_consistency_loss_is_the_mean_squared_softmax_difference() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3, 2))
    teacher = rng.dirichlet(np.ones(3), size=(2, 4, 3, 2)).transpose(0, 4, 1, 2, 3)
    student = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.mean((student - teacher) ** 2)  # float64 reference
    got = consistency_loss(torch.from_numpy(logits).float(), torch.from_numpy(teacher).float())
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_the_teacher_follows_the_students_weights_as_a_moving_average() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
    teacher = MeanTeacher(student)
    assert not teacher.network.training and not any(p.requires_grad for p in teacher.network.parameters())
    before = [p.detach().clone() for p in teacher.network.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.follow(student, step=0)  # decay 0: the teacher becomes the student
    for mine, theirs in zip(teacher.network.parameters(), student.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    before = [p.detach().clone() for p in teacher.network.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    teacher.follow(student, step=1000)  # decay 0.99
    for mine, old, theirs in zip(teacher.network.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(mine, 0.99 * old + 0.01 * theirs)
    x = torch.ones(5, 3)
    assert torch.equal(teacher.network(x), teacher.network(x))  # dropout off: a deterministic target


def test_unlabelled_patches_are_noisy_views_of_a_crop_and_a_pure_function_of_the_index() -> None:
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(1, 10, 12, 9)).astype(np.float32), rng.normal(size=(1, 6, 6, 6)).astype(np.float32)]
    schedule = UnlabelledSchedule(images, (8, 8, 8), batch_size=2, iterations=5, seed=3)
    assert len(schedule) == 10
    for i in range(len(schedule)):
        student, teacher = schedule[i]
        again = schedule[i]
        assert torch.equal(student, again[0]) and torch.equal(teacher, again[1])
        assert student.shape == teacher.shape == (1, 8, 8, 8)
        assert not torch.equal(student, teacher)  # two independent noise draws
        clean = (student + teacher).numpy() / 2  # within 2 · NOISE_CLIP of both views' crop
        matches = [
            np.abs(crop_image(image, centre, (8, 8, 8)) - clean).max() <= NOISE_CLIP + 1e-6
            for image in images
            for centre in np.ndindex(*image.shape[1:])
        ]
        assert any(matches)
        assert float((student - teacher).abs().max()) <= 2 * NOISE_CLIP + 1e-6
    with pytest.raises(ValueError, match="unlabelled"):
        UnlabelledSchedule([], (8, 8, 8), 2, 5, 3)


def labelled_blobs(count: int) -> list[Example]:
    rng = np.random.default_rng(2)
    out = []
    for _ in range(count):
        label = np.zeros((12, 12, 12), dtype=np.uint8)
        label[3:8, 4:9, 2:7] = 1
        label[8:10, 4:9, 2:7] = 2
        image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[None]
        out.append(Example(image, label))
    return out


def trained_weights(mean: bool, unlabelled: list[np.ndarray]) -> dict[str, torch.Tensor]:
    config = config_from_dict({"train": {"iterations": 6, "mean_teacher": mean, "device": "cpu"}}).train
    model_config = config_from_dict({"model": {"channels": [4, 8], "strides": [2]}}).model
    torch.manual_seed(0)
    model = build_model(model_config, network_plan(model_config))
    result = train(model, labelled_blobs(2), (8, 8, 8), config, torch.device("cpu"), seed=4, unlabelled=unlabelled)
    assert len(result.losses) == 6 and all(math.isfinite(v) for v in result.losses)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_mean_teacher_training_is_seeded_and_acts_only_with_unlabelled_images() -> None:
    pool = [example.image_C_D_H_W for example in labelled_blobs(3)]
    plain = trained_weights(False, pool)
    taught = trained_weights(True, pool)
    assert all(torch.equal(a, b) for a, b in zip(taught.values(), trained_weights(True, pool).values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(plain.values(), taught.values(), strict=True))
    alone = trained_weights(True, [])  # no unlabelled images: the plain loop
    assert all(torch.equal(a, b) for a, b in zip(plain.values(), alone.values(), strict=True))
