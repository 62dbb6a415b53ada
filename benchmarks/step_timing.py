"""One training step timed two ways: with the whole data path, and bare on tensors already on the device.

Their ratio says whether data loading starves the device (``pipeline_benchmark.py`` on CPU, ``gpu_pipeline.py`` on
a GPU). Every reading ends with a device synchronisation; the first two steps of each (allocator, kernel choice) are
left out of the medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from activeseg.config import TrainConfig
from activeseg.data.plan import Plan
from activeseg.engine.patches import Example
from activeseg.engine.training import PartialDiceCELoss, train

WARM_STEPS = 2
"""Steps left out of each median."""


def synchronised(device: torch.device) -> Callable[[], float]:
    """A clock that first waits for the device's queued work."""

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def train_step_seconds(
    model: torch.nn.Module,
    examples: Sequence[Example],
    patch: tuple[int, int, int],
    config: TrainConfig,
    device: torch.device,
    amp: bool = False,
    unlabelled: Sequence[npt.NDArray[np.float32]] = (),
) -> float:
    """Median seconds of a ``train`` step with the whole data path over ``config.iterations`` steps (seed 0)."""
    now = synchronised(device)
    laps: list[float] = []
    tick = [now()]

    def lap(_: int) -> None:
        end = now()  # one reading ends this lap and starts the next, so no time falls between laps
        laps.append(end - tick[0])
        tick[0] = end

    train(model, examples, patch, config, device, seed=0, amp=amp, progress=lap, unlabelled=unlabelled)
    return statistics.median(laps[WARM_STEPS:])


def step_seconds(
    model: torch.nn.Module,
    examples: Sequence[Example],
    plan: Plan,
    config: TrainConfig,
    device: torch.device,
    amp: bool,
) -> tuple[float, float]:
    """(median seconds of a ``train`` step with the data path, of a bare step on synthetic device tensors) over
    ``config.iterations`` steps each, the same model, loss, optimiser kind and precision."""
    now = synchronised(device)
    step = train_step_seconds(model, examples, plan.patch_size, config, device, amp)
    loss_fn, optimiser = PartialDiceCELoss(), torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    images = torch.randn(plan.batch_size, plan.channels, *plan.patch_size, device=device)
    labels = torch.randint(0, plan.num_classes, (plan.batch_size, 1, *plan.patch_size), device=device)
    model.train()
    bare = []
    for _ in range(config.iterations):
        start = now()
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        bare.append(now() - start)
    return step, statistics.median(bare[WARM_STEPS:])
