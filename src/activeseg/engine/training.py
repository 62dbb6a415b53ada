"""Training on patches: one readable loop, deterministic under a seed on CPU (any number of loading workers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from monai.networks.utils import one_hot
from torch import nn
from torch.utils.data import DataLoader, Dataset

from activeseg.acquisition.units import IGNORE
from activeseg.config import TrainConfig
from activeseg.engine.mean_teacher import MeanTeacher, UnlabelledSchedule, consistency_loss, consistency_weight
from activeseg.engine.patches import Example, PatchSchedule, augmentation

T = TypeVar("T")

Progress = Callable[[int], None]
"""Called with the number of steps just completed."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) for weight init, dropout and anything else that draws from torch's RNG."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class PartialDiceCELoss(nn.Module):
    """Dice + cross-entropy over labelled voxels only: ``IGNORE`` voxels add nothing to either term.

    The target is one-hot encoded *before* masking, so an unlabelled voxel is zero in every class (masking class
    indices would turn it into background). On a box-shaped labelled region this equals MONAI's ``DiceCELoss`` on
    that box alone, and on fully labelled batches it equals ``DiceCELoss(to_onehot_y=True, softmax=True)`` exactly.

    ``batch_dice`` is nnU-Net's Dice for partial labels: foreground classes only, their voxels summed over the batch
    before the ratio. Per sample, a labelled unit that holds no voxel of a class asks for no prediction of that class
    anywhere in the sample; with random patches most units hold none, and a class can collapse (hippocampus, 128
    random patches, seed 0: per-sample Dice gave posterior 0.14 and mean 0.38 test Dice; batch Dice gave 0.77).
    """

    def __init__(self, batch_dice: bool = False) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(softmax=True, include_background=not batch_dice, batch=batch_dice)

    def forward(self, logits_B_C_D_H_W: torch.Tensor, labels_B_1_D_H_W: torch.Tensor) -> torch.Tensor:
        mask_B_1_D_H_W = labels_B_1_D_H_W != IGNORE
        target_B_1_D_H_W = torch.where(mask_B_1_D_H_W, labels_B_1_D_H_W, 0)
        target_B_C_D_H_W = one_hot(target_B_1_D_H_W, logits_B_C_D_H_W.shape[1])
        dice: torch.Tensor = self.dice(logits_B_C_D_H_W, target_B_C_D_H_W, mask_B_1_D_H_W)
        cross_entropy = F.cross_entropy(logits_B_C_D_H_W, labels_B_1_D_H_W[:, 0], ignore_index=IGNORE)
        return dice + cross_entropy


def loader_of(schedule: Dataset[T], config: TrainConfig, device: torch.device) -> DataLoader[T]:
    """Batches of a seeded schedule, in order (each sample is a pure function of its index)."""
    return DataLoader(
        schedule,
        batch_size=config.batch_size,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork" if config.workers else None,
    )


@dataclass(frozen=True)
class TrainResult:
    """What one training run reports."""

    losses: list[float]
    seconds: float


def train(
    model: nn.Module,
    examples: Sequence[Example],
    patch: tuple[int, int, int],
    config: TrainConfig,
    device: torch.device,
    seed: int,
    amp: bool = False,
    progress: Progress | None = None,
    unlabelled: Sequence[npt.NDArray[np.float32]] = (),
) -> TrainResult:
    """Train ``model`` in place for ``config.iterations`` steps on seeded patch batches of ``examples``.

    Labels may be partial (``IGNORE`` outside the labelled units): the loss sees labelled voxels only, with batch
    Dice when any example is partially labelled (``PartialDiceCELoss``); full labels keep the per-sample Dice. With
    ``config.mean_teacher`` and ``unlabelled`` images (image_C_D_H_W), each step adds a batch of their patches and
    the consistency loss with a mean teacher (``engine.mean_teacher``).
    """
    start = time.perf_counter()
    augment = augmentation(config.flip_indices, config.spatial_augment) if config.augment else None
    schedule = PatchSchedule(
        examples, patch, config.batch_size, config.iterations, config.oversample_foreground, seed, augment
    )
    loader = loader_of(schedule, config, device)
    loss_fn = PartialDiceCELoss(batch_dice=any(example.boxes is not None for example in examples))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule_lr = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=config.iterations, power=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    model.to(device).train()
    teacher = MeanTeacher(model) if config.mean_teacher and unlabelled else None
    unlabelled_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(())
    if teacher is not None:
        views = UnlabelledSchedule(unlabelled, patch, config.batch_size, config.iterations, seed)
        unlabelled_batches = iter(loader_of(views, config, device))
    losses = []
    for step, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            if teacher is None:
                loss = loss_fn(model(images), labels)
            else:
                student_view, teacher_view = (view.to(device, non_blocking=True) for view in next(unlabelled_batches))
                logits = model(torch.cat([images, student_view]))
                weight = consistency_weight(step, config.iterations)
                consistency = consistency_loss(logits[len(images) :], teacher.probabilities(teacher_view))
                loss = loss_fn(logits[: len(images)], labels) + weight * consistency
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule_lr.step()
        if teacher is not None:
            teacher.follow(model, step)
        losses.append(float(loss.detach()))
        if progress:
            progress(1)
    model.eval()
    return TrainResult(losses, time.perf_counter() - start)
