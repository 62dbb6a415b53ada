"""The dataset fingerprint: what planning needs to know about the pool (as nnU-Net's, built from the files).

Per case: the native shape and orientation code, the spacing after reorientation to RAS, the channel count, the
non-zero crop box, a seeded sample of foreground intensities per channel and the voxels of each class. Over the
pool: the spacings and cropped shapes, foreground intensity statistics per channel (mean, std, 0.5 and 99.5
percentiles) and class frequencies. The foreground statistics read the pool's labels, as nnU-Net's (and nnActive's)
plans do; they only set the CT intensity window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from activeseg.data.dataset import Case, Dataset
from activeseg.data.geometry import reorient_shape, spacing_of
from activeseg.data.io import check_label_shape, read_image, read_volume

orientations: Any = nib.orientations  # nibabel's orientation helpers (untyped)
SAMPLES_PER_CASE = 2000
"""Foreground intensities sampled per case and channel for the global statistics."""


@dataclass(frozen=True)
class CaseFingerprint:
    """One case's geometry and content, as planning needs them."""

    case_id: str
    shape: list[int]
    """Native array shape (spatial)."""
    orientation: str
    """Axis codes of the native affine, e.g. ``LAS``."""
    spacing: list[float]
    """Spacing in mm along the RAS axes (after reorientation)."""
    channels: int
    crop: list[list[int]]
    """The non-zero box of the native array, [start, stop) per native axis, always holding every labelled voxel."""
    cropped_shape: list[int]
    """The crop box's shape along the RAS axes."""
    class_voxels: dict[str, int]


def crop_box(image_C_X_Y_Z: npt.NDArray[Any], label_X_Y_Z: npt.NDArray[Any], mode: str) -> list[list[int]]:
    """The smallest box holding every non-zero image voxel (any channel) and every labelled voxel; the whole array
    for ``mode == "none"`` or an image without zeros."""
    shape = label_X_Y_Z.shape
    if mode == "none":
        return [[0, int(s)] for s in shape]
    keep = np.any(np.asarray(image_C_X_Y_Z) != 0, axis=0) | (np.asarray(label_X_Y_Z) > 0)
    if not keep.any():
        return [[0, int(s)] for s in shape]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(keep.any(axis=other))
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def fingerprint_case(case: Case, crop: str, seed: int) -> tuple[CaseFingerprint, npt.NDArray[np.float64]]:
    """A case's fingerprint and its sampled foreground intensities (channels × samples)."""
    check_label_shape(case)
    image = read_image(case)
    label = np.asarray(read_volume(case.label).array)
    affine = image.affine
    orientation = orientations.io_orientation(affine)
    reoriented = affine @ orientations.inv_ornt_aff(orientation, label.shape)
    box = crop_box(image.array, label, crop)
    sizes = [b - a for a, b in box]
    foreground = label > 0
    rng = np.random.default_rng(seed)
    voxels = np.flatnonzero(foreground)
    picked = rng.choice(voxels, size=min(SAMPLES_PER_CASE, voxels.size), replace=False) if voxels.size else voxels
    samples = np.stack([np.asarray(channel, dtype=np.float64).reshape(-1)[picked] for channel in image.array])
    values, counts = np.unique(label, return_counts=True)
    return (
        CaseFingerprint(
            case.case_id,
            [int(s) for s in label.shape],
            "".join(orientations.aff2axcodes(affine)),
            [float(s) for s in spacing_of(reoriented)],
            int(image.array.shape[0]),
            box,
            list(reorient_shape(tuple(sizes), orientation)),
            {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
        ),
        samples,
    )


@dataclass(frozen=True)
class Fingerprint:
    """The pool's fingerprint (see the module docstring)."""

    cases: list[CaseFingerprint]
    intensity: list[dict[str, float]]
    """Per channel: mean, std, p00_5 and p99_5 of the sampled foreground intensities."""
    modality: dict[str, str]
    """Channel index → modality name, from dataset.json (``channel_names`` or ``modality``)."""

    @property
    def spacings(self) -> npt.NDArray[np.float64]:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def channels(self) -> int:
        return self.cases[0].channels

    def class_frequencies(self) -> dict[str, float]:
        totals: dict[str, int] = {}
        for case in self.cases:
            for value, count in case.class_voxels.items():
                totals[value] = totals.get(value, 0) + count
        everything = sum(totals.values())
        return {value: count / everything for value, count in sorted(totals.items(), key=lambda kv: int(kv[0]))}

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": [asdict(c) for c in self.cases],
            "intensity": self.intensity,
            "modality": self.modality,
            "class_frequencies": self.class_frequencies(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Fingerprint:
        return cls([CaseFingerprint(**c) for c in raw["cases"]], raw["intensity"], raw["modality"])


def fingerprint(
    dataset: Dataset, cases: Sequence[str], crop: str, seed: int = 0, progress: Callable[[int], None] | None = None
) -> Fingerprint:
    """Fingerprint the given cases of a dataset (the pool: never the test split)."""
    found: list[CaseFingerprint] = []
    samples: list[npt.NDArray[np.float64]] = []
    for n, case_id in enumerate(cases):
        case_print, sample = fingerprint_case(dataset.case(case_id), crop, seed + n)
        found.append(case_print)
        samples.append(sample)
        if progress is not None:
            progress(1)
    channels = {c.channels for c in found}
    if len(channels) != 1:
        raise ValueError(f"cases have different channel counts: {sorted(channels)}")
    pooled = np.concatenate(samples, axis=1)
    intensity = []
    for values in pooled:
        if values.size == 0:  # no labelled foreground anywhere: statistics of nothing
            intensity.append({"mean": 0.0, "std": 1.0, "p00_5": 0.0, "p99_5": 0.0})
            continue
        low, high = np.percentile(values, [0.5, 99.5])
        intensity.append(
            {"mean": float(values.mean()), "std": float(values.std()), "p00_5": float(low), "p99_5": float(high)}
        )
    return Fingerprint(found, intensity, dict(dataset.modality))
