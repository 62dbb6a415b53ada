"""The plan: how every case of a dataset is preprocessed and what the network sees (nnU-Net's recipe, as a file).

From the pool's :class:`~activeseg.data.fingerprint.Fingerprint` and the config's ``plan`` overrides:

- **target spacing**: the median spacing per RAS axis; an anisotropic axis (median more than 3× the finest)
  takes the 10th percentile of its spacings instead;
- **normalisation** per channel: CT gets a global clip to the foreground's 0.5–99.5 percentiles and a global
  z-score with the foreground's mean and std; any other modality a z-score per volume;
- **patch size**: the median case shape at the target spacing, rounded up to what the network's strides divide,
  then shrunk (largest axis first, in millimetres) until a batch of patches fits the memory budget;
- **strides** per level and axis: an axis is halved while it keeps at least 8 voxels at the next level and its
  spacing is not more than twice the finest one's (coarse axes wait until the others catch up); ``plan.strides``
  (per axis) or ``model.strides`` (every axis alike) fix them instead.

``plan.json`` holds the plan and its fingerprint; a run keeps a copy in its directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.config import RunConfig
from activeseg.data.fingerprint import Fingerprint
from activeseg.data.geometry import ANISOTROPY

PLAN_VERSION = 1
CPU_MEMORY_GB = 1.0
BYTES_PER_ACTIVATION = 12.0
"""Bytes one estimated activation costs in a training step (float32 tensors a block keeps for the backward pass):
the largest of the ratios measured on MONAI UNet steps on CPU by ``benchmarks/plan_memory.py`` (9.6–11.9)."""


@dataclass(frozen=True)
class Normalisation:
    """How one channel's intensities are normalised."""

    scheme: str
    """``ct`` (global clip and z-score) or ``zscore`` (per volume)."""
    clip: tuple[float, float] | None = None
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Plan:
    """Everything that fixes the planned grid and the network's input (see the module docstring)."""

    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    batch_size: int
    strides: list[tuple[int, int, int]]
    """Per level below the first: the down-sampling of each RAS axis (1 or 2)."""
    normalisation: list[Normalisation]
    crop: str
    channels: int
    num_classes: int
    memory_gb: float
    estimated_gb: float
    fingerprint: Fingerprint | None = field(default=None, compare=False)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """What every spatial size the network sees must be divisible by, per axis."""
        product = np.prod(np.asarray(self.strides, dtype=np.int64).reshape(-1, 3), axis=0)
        return int(product[0]), int(product[1]), int(product[2])

    def preprocessing_key(self) -> dict[str, Any]:
        """What the preprocessed arrays depend on (the cache key's plan part)."""
        return {
            "version": PLAN_VERSION,
            "target_spacing": list(self.target_spacing),
            "normalisation": [asdict(n) for n in self.normalisation],
            "crop": self.crop,
        }

    def to_json(self) -> dict[str, Any]:
        raw = {k: v for k, v in asdict(self).items() if k != "fingerprint"}
        raw["strides"] = [list(s) for s in self.strides]
        raw["fingerprint"] = self.fingerprint.to_json() if self.fingerprint else None
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(
            tuple(raw["target_spacing"]),
            tuple(raw["patch_size"]),
            int(raw["batch_size"]),
            [tuple(s) for s in raw["strides"]],
            [
                Normalisation(n["scheme"], tuple(n["clip"]) if n["clip"] else None, n["mean"], n["std"])
                for n in raw["normalisation"]
            ],
            raw["crop"],
            int(raw["channels"]),
            int(raw["num_classes"]),
            float(raw["memory_gb"]),
            float(raw["estimated_gb"]),
            Fingerprint.from_json(raw["fingerprint"]) if raw.get("fingerprint") else None,
        )


def write_plan(plan: Plan, path: Path) -> None:
    """``plan.json``: readable, sorted keys."""
    Path(path).write_text(json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n")


def read_plan(path: Path) -> Plan:
    return Plan.from_json(json.loads(Path(path).read_text()))


# --- planning ---------------------------------------------------------------------------------------------------


def target_spacing(spacings_N_3: np.ndarray) -> tuple[float, float, float]:
    """The median per axis; an anisotropic axis (median > 3× the finest median) takes its 10th percentile."""
    median = np.median(spacings_N_3, axis=0)
    coarse = int(np.argmax(median))
    if median[coarse] > ANISOTROPY * median.min():
        median[coarse] = np.percentile(spacings_N_3[:, coarse], 10)
    return float(median[0]), float(median[1]), float(median[2])


def normalisations(fingerprint: Fingerprint, scheme: str) -> list[Normalisation]:
    """One normalisation per channel: CT channels get the global foreground window, the others per-volume z."""
    out = []
    for channel in range(fingerprint.channels):
        modality = fingerprint.modality.get(str(channel), "").strip().upper()
        ct = scheme == "ct" or (scheme == "auto" and modality == "CT")
        if ct:
            stats = fingerprint.intensity[channel]
            out.append(Normalisation("ct", (stats["p00_5"], stats["p99_5"]), stats["mean"], max(stats["std"], 1e-8)))
        else:
            out.append(Normalisation("zscore"))
    return out


def plan_strides(patch: tuple[float, ...], spacing: tuple[float, ...], levels: int) -> list[tuple[int, int, int]]:
    """Per level, halve each axis that keeps at least 8 voxels at the next level and is not coarser than twice the
    finest current spacing."""
    size, current = list(map(float, patch)), list(spacing)
    strides = []
    for _ in range(levels):
        finest = min(current)
        step = tuple(2 if size[a] >= 8 and current[a] <= 2 * finest else 1 for a in range(3))
        strides.append((int(step[0]), int(step[1]), int(step[2])))
        size = [s / k for s, k in zip(size, step, strict=True)]
        current = [c * k for c, k in zip(current, step, strict=True)]
    return strides


def activation_gb(
    patch: tuple[int, ...], batch: int, channels: tuple[int, ...], strides: Sequence[tuple[int, int, int]]
) -> float:
    """Estimated memory of one training step: each level's feature maps (encoder and decoder, two convolutions
    each) times the bytes a block keeps per activation."""
    voxels = float(np.prod(patch))
    total = 0.0
    for level, width in enumerate(channels):
        shrink = float(np.prod([np.prod(s) for s in strides[:level]])) if level else 1.0
        total += 4 * width * voxels / shrink
    return batch * total * BYTES_PER_ACTIVATION / 1e9


def make_plan(fingerprint: Fingerprint, config: RunConfig, num_classes: int, memory_gb: float) -> Plan:
    """The plan of a pool under a run config's ``plan`` and ``model`` sections (see the module docstring)."""
    overrides, model = config.plan, config.model
    spacing = overrides.target_spacing or target_spacing(fingerprint.spacings)
    levels = len(model.channels) - 1
    shapes = np.array(
        [[n * s / t for n, s, t in zip(c.cropped_shape, c.spacing, spacing, strict=True)] for c in fingerprint.cases]
    )
    median = tuple(float(v) for v in np.median(shapes, axis=0))
    fixed_strides = list(overrides.strides) if overrides.strides is not None else None
    if model.strides is not None:
        fixed_strides = [(s, s, s) for s in model.strides]

    def fitted(extent: tuple[float, ...]) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
        strides = fixed_strides or plan_strides(extent, spacing, levels)
        divisor = np.prod(np.asarray(strides).reshape(-1, 3), axis=0)
        patch = tuple(int(math.ceil(e / d) * d) for e, d in zip(extent, divisor, strict=True))
        return (patch[0], patch[1], patch[2]), strides

    batch = config.train.batch_size
    if overrides.patch_size is not None:
        patch, strides = fitted(tuple(float(p) for p in overrides.patch_size))
    else:
        extent = list(median)
        patch, strides = fitted(tuple(extent))
        while activation_gb(patch, batch, model.channels, strides) > memory_gb and max(extent) > 8:
            physical = [e * s for e, s in zip(extent, spacing, strict=True)]
            axis = int(np.argmax(physical))  # shrink the longest side in millimetres
            extent[axis] = max(8.0, extent[axis] * 0.9)
            patch, strides = fitted(tuple(extent))
    return Plan(
        target_spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        patch_size=patch,
        batch_size=batch,
        strides=strides,
        normalisation=normalisations(fingerprint, overrides.normalisation),
        crop=overrides.crop,
        channels=fingerprint.channels,
        num_classes=num_classes,
        memory_gb=memory_gb,
        estimated_gb=activation_gb(patch, batch, model.channels, strides),
        fingerprint=fingerprint,
    )
