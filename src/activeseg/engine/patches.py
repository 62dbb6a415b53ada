"""Training patches: a seeded schedule of crops, a share of them centred on labelled foreground (nnU-Net's recipe).

Sample ``i`` of the schedule is a pure function of the seed and ``i``: it picks a labelled case (for the batch's forced
share, one with labelled foreground), then a centre — a labelled foreground voxel (a class drawn uniformly, then one
of its voxels) for the forced share, else a uniformly drawn labelled voxel — and crops the patch around it from the
memory-mapped arrays, so a patch reads only its own voxels whatever the volume's size. With partial labels (slices,
patches) "labelled" means inside the queried units, so every batch learns from what the annotator gave. Volumes
smaller than the patch are padded as the sliding window pads them (image 0, label ignored). Because every sample is
seeded by its index, any number of data-loading workers gives the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch.utils.data import Dataset

from activeseg.acquisition.units import IGNORE, Box
from activeseg.seeds import derive_seed


@dataclass(frozen=True, eq=False)
class Example:
    """A labelled case as training sees it: its planned image, its label (``IGNORE`` where nobody labelled) and the
    boxes that hold its labels (None: the whole volume)."""

    image_C_D_H_W: npt.NDArray[np.float32]
    label_D_H_W: npt.NDArray[np.uint8]
    boxes: tuple[Box, ...] | None = None
    foreground: dict[int, npt.NDArray[np.int64]] = field(init=False, repr=False, compare=False)
    """Flat indices of each labelled foreground class's voxels."""

    def __post_init__(self) -> None:
        label = np.asarray(self.label_D_H_W)
        values = [int(v) for v in np.unique(label) if 0 < v < IGNORE]
        flat = label.reshape(-1)
        object.__setattr__(self, "foreground", {v: np.flatnonzero(flat == v) for v in values})

    @property
    def shape(self) -> tuple[int, int, int]:
        d, h, w = self.label_D_H_W.shape
        return int(d), int(h), int(w)

    def labelled_boxes(self) -> tuple[Box, ...]:
        return self.boxes or (((0, self.shape[0]), (0, self.shape[1]), (0, self.shape[2])),)


SPATIAL_PROBABILITY = 1 - 0.8**2
"""nnU-Net rotates a patch with probability 0.2 and scales it with 0.2, independently; one affine draw does both."""


def augmentation(flip_axes: Sequence[int], spatial: bool = False) -> Compose:
    """MONAI augmentation, seeded per sample: flips on the allowed axes and small intensity changes; with
    ``spatial``, first a random rotation (±30° about each axis) and scaling (0.7–1.3) of the patch in voxel space,
    nnU-Net's ranges, the label by nearest neighbour. ``PatchSchedule`` passes the label shifted by one, so voxels
    the affine brings in from outside the patch (0) come out ``IGNORE``."""
    keys = ["image", "label"]
    affine = RandAffined(
        keys,
        prob=SPATIAL_PROBABILITY,
        rotate_range=(np.pi / 6,) * 3,
        scale_range=(0.3,) * 3,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
    )
    return Compose(
        [
            *([affine] if spatial else []),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandGaussianNoised("image", prob=0.2, std=0.05),
        ]
    )


def forced_share(batch_size: int, oversample: float) -> int:
    """Samples of a batch centred on foreground: nnU-Net's rule (the last ``batch - round(batch·(1 - share))``)."""
    return batch_size - round(batch_size * (1 - oversample))


class PatchSchedule(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``iterations × batch_size`` seeded patches (see the module docstring); item ``i`` belongs to step
    ``i // batch_size``."""

    def __init__(
        self,
        examples: Sequence[Example],
        patch: tuple[int, int, int],
        batch_size: int,
        iterations: int,
        oversample: float,
        seed: int,
        augment: Compose | None,
    ) -> None:
        if not examples:
            raise ValueError("cannot train on an empty labelled set")
        self.examples = list(examples)
        self.patch = patch
        self.batch_size = batch_size
        self.iterations = iterations
        self.forced = forced_share(batch_size, oversample)
        self.with_foreground = [i for i, example in enumerate(self.examples) if example.foreground]
        """The examples a forced sample is drawn from: those with labelled foreground (all of them, with full
        labels). With partial labels most queried units may hold none; drawing the case first from every example
        would centre the forced share on background whenever the chosen case's units missed the structure."""
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return self.iterations * self.batch_size

    def centre(self, index: int) -> tuple[int, tuple[int, int, int]]:
        """Which example sample ``index`` crops, and the voxel its patch is centred on."""
        rng = np.random.default_rng(derive_seed(self.seed, "patch", index))
        forced = index % self.batch_size >= self.batch_size - self.forced
        candidates = self.with_foreground if forced and self.with_foreground else range(len(self.examples))
        chosen = candidates[int(rng.integers(len(candidates)))]
        example = self.examples[chosen]
        if forced and example.foreground:
            classes = sorted(example.foreground)
            voxels = example.foreground[classes[int(rng.integers(len(classes)))]]
            flat = int(voxels[int(rng.integers(len(voxels)))])
            d, h, w = np.unravel_index(flat, example.shape)
            return chosen, (int(d), int(h), int(w))
        boxes = example.labelled_boxes()
        sizes = np.array([np.prod([b - a for a, b in box]) for box in boxes], dtype=np.float64)
        box = boxes[int(rng.choice(len(boxes), p=sizes / sizes.sum()))]
        return chosen, (int(rng.integers(*box[0])), int(rng.integers(*box[1])), int(rng.integers(*box[2])))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, centre = self.centre(index)
        example = self.examples[chosen]
        image, label = crop(example, centre, self.patch)
        shifted = torch.from_numpy(label[None]).to(torch.int16) + 1  # 0: outside the patch (see augmentation)
        sample = {"image": torch.from_numpy(image), "label": shifted}
        if self.augment is not None:
            self.augment.set_random_state(seed=derive_seed(self.seed, "augment", index) % (2**32))
            sample = self.augment(sample)
        label_1_D_H_W = torch.as_tensor(sample["label"]).round().long() - 1
        return torch.as_tensor(sample["image"]).float(), label_1_D_H_W.masked_fill(label_1_D_H_W < 0, IGNORE)


def placement(
    centre: tuple[int, int, int], patch: tuple[int, int, int], shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], list[tuple[int, int]]]:
    """Where the patch around ``centre`` lies in a volume of ``shape``: the slices it reads (shifted to lie inside
    the volume where it fits) and the padding before and after on each axis (where it does not)."""
    starts, pads = [], []
    for c, p, n in zip(centre, patch, shape, strict=True):
        if n >= p:
            starts.append(int(np.clip(c - p // 2, 0, n - p)))
            pads.append((0, 0))
        else:
            starts.append(0)
            pads.append(((p - n) // 2, p - n - (p - n) // 2))
    d, h, w = (slice(s, s + min(p, n)) for s, p, n in zip(starts, patch, shape, strict=True))
    return (d, h, w), pads


def crop_image(
    image_C_D_H_W: npt.NDArray[np.float32], centre: tuple[int, int, int], patch: tuple[int, int, int]
) -> npt.NDArray[np.float32]:
    """The image patch around ``centre`` (a writable copy), padded with 0 where the volume is smaller."""
    d, h, w = image_C_D_H_W.shape[1:]
    cut, pads = placement(centre, patch, (int(d), int(h), int(w)))
    return _read(image_C_D_H_W, (slice(None), *cut), [(0, 0), *pads], 0.0, np.float32)


def crop(
    example: Example, centre: tuple[int, int, int], patch: tuple[int, int, int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The patch around ``centre``, shifted to lie inside the volume where it fits, padded where it does not (image
    0, label ``IGNORE``)."""
    cut, pads = placement(centre, patch, example.shape)
    image = _read(example.image_C_D_H_W, (slice(None), *cut), [(0, 0), *pads], 0.0, np.float32)
    return image, _read(example.label_D_H_W, cut, pads, IGNORE, np.uint8)


def _read(
    array: npt.NDArray[Any], cut: tuple[slice, ...], pads: list[tuple[int, int]], fill: float, dtype: type[Any]
) -> npt.NDArray[Any]:
    """A writable copy of ``array[cut]`` as ``dtype``, padded with ``fill`` where ``pads`` say."""
    region: npt.NDArray[Any] = np.array(array[cut], dtype=dtype)
    if any(before or after for before, after in pads):
        region = np.pad(region, pads, constant_values=fill)
    return region
