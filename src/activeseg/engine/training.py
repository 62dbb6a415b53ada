"""Training: one readable loop, deterministic under a seed on CPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from monai.networks.utils import one_hot
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd
from torch import nn

from activeseg.acquisition.units import IGNORE
from activeseg.config import TrainConfig

Example = tuple[np.ndarray, np.ndarray]
"""(image_C_D_H_W float32, label_D_H_W uint8) in the preprocessed shape; voxels nobody labelled hold ``IGNORE``"""

Progress = Callable[[int], None]
"""Called with the number of steps just completed."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) for weight init, dropout and anything else that draws from torch's RNG."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def augmentation(seed: int, flip_axes: Sequence[int]) -> Compose:
    """Light MONAI augmentation: flips and small intensity changes, with its own seeded random state."""
    keys = ["image", "label"]
    transform = Compose(
        [
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandGaussianNoised("image", prob=0.2, std=0.05),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


class PartialDiceCELoss(nn.Module):
    """Dice + cross-entropy over labelled voxels only: ``IGNORE`` voxels add nothing to either term.

    The target is one-hot encoded *before* masking, so an unlabelled voxel is zero in every class (masking class
    indices would turn it into background). On a box-shaped labelled region this equals MONAI's ``DiceCELoss`` on
    that box alone, and on fully labelled batches it equals ``DiceCELoss(to_onehot_y=True, softmax=True)`` exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(softmax=True)

    def forward(self, logits_B_C_D_H_W: torch.Tensor, labels_B_1_D_H_W: torch.Tensor) -> torch.Tensor:
        mask_B_1_D_H_W = labels_B_1_D_H_W != IGNORE
        target_B_1_D_H_W = torch.where(mask_B_1_D_H_W, labels_B_1_D_H_W, 0)
        target_B_C_D_H_W = one_hot(target_B_1_D_H_W, logits_B_C_D_H_W.shape[1])
        dice: torch.Tensor = self.dice(logits_B_C_D_H_W, target_B_C_D_H_W, mask_B_1_D_H_W)
        cross_entropy = F.cross_entropy(logits_B_C_D_H_W, labels_B_1_D_H_W[:, 0], ignore_index=IGNORE)
        return dice + cross_entropy


@dataclass(frozen=True)
class TrainResult:
    """What one training run reports."""

    losses: list[float]
    seconds: float


def train(
    model: nn.Module,
    examples: Sequence[Example],
    config: TrainConfig,
    device: torch.device,
    seed: int,
    amp: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.iterations`` steps on batches drawn (seeded) from ``examples``.

    Labels may be partial (``IGNORE`` outside the labelled units): the loss sees labelled voxels only.
    """
    if not examples:
        raise ValueError("cannot train on an empty labelled set")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    augment = augmentation(seed, config.flip_axes) if config.augment else None
    loss_fn = PartialDiceCELoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=config.iterations, power=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    model.to(device).train()
    losses = []
    for _ in range(config.iterations):
        images, labels = _batch(examples, rng.integers(len(examples), size=config.batch_size), augment)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(images.to(device)), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(1)
    model.eval()
    return TrainResult(losses, time.perf_counter() - start)


def _batch(examples: Sequence[Example], indices: np.ndarray, augment: Compose | None) -> tuple[torch.Tensor, ...]:
    images, labels = [], []
    for i in indices:
        image_C_D_H_W, label_D_H_W = examples[int(i)]
        sample = {"image": torch.from_numpy(image_C_D_H_W), "label": torch.from_numpy(label_D_H_W[None])}
        if augment is not None:
            sample = augment(sample)
        images.append(torch.as_tensor(sample["image"]).float())
        labels.append(torch.as_tensor(sample["label"]).long())
    return torch.stack(images), torch.stack(labels)
