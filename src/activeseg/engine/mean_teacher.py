"""Mean teacher: the unlabelled voxels of the whole pool train by consistency with a weight-averaged teacher.

Tarvainen & Valpola (NeurIPS 2017), with the settings Yu et al. used for 3D medical segmentation (UA-MT, MICCAI
2019), fixed here before any benchmark ran: the teacher's weights are an exponential moving average of the
student's (decay ``min(1 - 1/(step + 1), 0.99)``), both see the same unlabelled patch under their own Gaussian noise
(σ 0.1, clipped to ±0.2), and the student pays the mean squared difference of the two softmax maps, weighted by
``0.1 · exp(-5 (1 - t)²)`` where t rises from 0 to 1 over the first 40% of the round's steps. The teacher predicts
with dropout off. The round's model is the student, as in every other arm; the teacher only supplies targets.

Unlike pseudo-labels this needs no previous round, so it acts from round 0, and every pool case contributes
whether or not anybody labelled it: a patch is cropped around a uniformly drawn voxel of a uniformly drawn case.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import Dataset

from activeseg.engine.patches import crop_image
from activeseg.seeds import derive_seed

EMA_DECAY = 0.99
CONSISTENCY_WEIGHT = 0.1
RAMP_UP_SHARE = 0.4
NOISE_STD = 0.1
NOISE_CLIP = 0.2


def consistency_weight(step: int, iterations: int) -> float:
    """The consistency term's weight at ``step`` (0-based) of ``iterations``: the sigmoid-shaped ramp-up
    ``CONSISTENCY_WEIGHT · exp(-5 (1 - t)²)``, t = step / (RAMP_UP_SHARE · iterations) capped at 1."""
    t = min(1.0, step / max(1.0, RAMP_UP_SHARE * iterations))
    return CONSISTENCY_WEIGHT * math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(student_logits_B_C_D_H_W: torch.Tensor, teacher_probs_B_C_D_H_W: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's softmax and the teacher's, over every voxel and class."""
    student_probs_B_C_D_H_W = torch.softmax(student_logits_B_C_D_H_W.float(), dim=1)
    return torch.mean((student_probs_B_C_D_H_W - teacher_probs_B_C_D_H_W.float()) ** 2)


class MeanTeacher:
    """The teacher: a copy of the student whose weights follow the student's as an exponential moving average."""

    def __init__(self, student: nn.Module) -> None:
        self.network = copy.deepcopy(student).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def probabilities(self, images_B_C_D_H_W: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(images_B_C_D_H_W), dim=1)

    @torch.no_grad()
    def follow(self, student: nn.Module, step: int) -> None:
        """Move the teacher towards the student after optimiser step ``step`` (0-based); buffers are copied."""
        decay = min(1.0 - 1.0 / (step + 1), EMA_DECAY)
        for average, weight in zip(self.network.parameters(), student.parameters(), strict=True):
            average.mul_(decay).add_(weight.detach(), alpha=1.0 - decay)
        for copied, buffer in zip(self.network.buffers(), student.buffers(), strict=True):
            copied.copy_(buffer)


class UnlabelledSchedule(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``iterations × batch_size`` seeded unlabelled patches, each as the student's and the teacher's noisy view.

    Sample ``i`` is a pure function of the seed and ``i`` (so any number of loading workers gives the same batches):
    a case drawn uniformly, a centre drawn uniformly in it, and two independent noise draws. No label is read.
    """

    def __init__(
        self,
        images: Sequence[npt.NDArray[np.float32]],
        patch: tuple[int, int, int],
        batch_size: int,
        iterations: int,
        seed: int,
    ) -> None:
        if not images:
            raise ValueError("mean teacher needs at least one unlabelled image")
        self.images = list(images)
        self.patch = patch
        self.batch_size = batch_size
        self.iterations = iterations
        self.seed = seed

    def __len__(self) -> int:
        return self.iterations * self.batch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(self.seed, "unlabelled", index))
        image_C_D_H_W = self.images[int(rng.integers(len(self.images)))]
        centre = tuple(int(rng.integers(n)) for n in image_C_D_H_W.shape[1:])
        patch_C_D_H_W = crop_image(image_C_D_H_W, (centre[0], centre[1], centre[2]), self.patch)
        student, teacher = (
            patch_C_D_H_W + np.clip(rng.normal(0.0, NOISE_STD, patch_C_D_H_W.shape), -NOISE_CLIP, NOISE_CLIP)
            for _ in range(2)
        )
        return torch.from_numpy(student.astype(np.float32)), torch.from_numpy(teacher.astype(np.float32))
