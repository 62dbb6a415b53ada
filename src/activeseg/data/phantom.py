"""Synthetic MSD-layout datasets: noisy, bias-corrupted ellipsoids with a core and a shell.

Each case holds one randomly placed, sized and oriented ellipsoid: an outer shell (label 1)
around an off-centre inner core (label 2). A rare sub-population has small structures, low
contrast and more noise. Everything is determined by ``seed``; case ``i`` has the same content
whatever ``n_cases`` is (only which cases are rare depends on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.data.io import SUPPORTED_SUFFIXES, write_volume

PHANTOM_LABELS = {0: "background", 1: "shell", 2: "core"}


def make_phantom_dataset(
    root: Path,
    n_cases: int,
    *,
    shape: tuple[int, int, int] = (32, 32, 32),
    seed: int = 0,
    rare_fraction: float = 0.15,
    suffix: str = ".nii.gz",
) -> Path:
    """Write ``n_cases`` phantoms to ``root/imagesTr``, ``root/labelsTr`` and ``root/dataset.json``.

    Case ids are ``phantom_000``, …; the ids of the rare cases are listed in dataset.json under
    ``"rare_cases"``. Refuses to write into non-empty imagesTr/labelsTr folders. Returns ``root``.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}")
    if not 0.0 <= rare_fraction <= 1.0:
        raise ValueError(f"rare_fraction must lie in [0, 1], got {rare_fraction}")
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"suffix must be one of {SUPPORTED_SUFFIXES}, got {suffix!r}")
    root = Path(root)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty; phantoms are only written to empty folders")
        folder.mkdir(parents=True, exist_ok=True)

    rare_seq, *case_seqs = np.random.SeedSequence(seed).spawn(n_cases + 1)
    n_rare = round(n_cases * rare_fraction)
    if rare_fraction > 0 and n_cases >= 5:
        n_rare = max(n_rare, 1)
    rare = {int(i) for i in np.random.default_rng(rare_seq).choice(n_cases, size=n_rare, replace=False)}

    width = max(3, len(str(n_cases - 1)))
    ids = [f"phantom_{i:0{width}d}" for i in range(n_cases)]
    for i, case_id in enumerate(ids):
        image, label = _phantom_case(np.random.default_rng(case_seqs[i]), shape, rare=i in rare)
        write_volume(images_dir / f"{case_id}{suffix}", image, np.eye(4))
        write_volume(labels_dir / f"{case_id}{suffix}", label, np.eye(4))

    meta = {
        "name": "phantom",
        "description": "Synthetic ellipsoids with a shell and a core (activeseg.data.phantom)",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": {str(v): n for v, n in PHANTOM_LABELS.items()},
        "numTraining": n_cases,
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}{suffix}", "label": f"./labelsTr/{c}{suffix}"} for c in ids],
        "test": [],
        "rare_cases": [ids[i] for i in sorted(rare)],
        "seed": seed,
        "shape": list(shape),
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root


def _phantom_case(
    rng: np.random.Generator, shape: tuple[int, int, int], *, rare: bool
) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """One (image, label) pair; the image is float32, or uint8 for about a third of the cases."""
    size = np.asarray(shape, dtype=np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape), indexing="ij"), axis=-1)

    # Geometry: a rotated ellipsoid (shell) around a smaller, shifted ellipsoid (core).
    smallest = float(size.min())
    radii = rng.uniform(0.07, 0.12, 3) * smallest if rare else rng.uniform(0.16, 0.3, 3) * smallest
    radii = np.maximum(radii, 2.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    reach = float(radii.max()) + 1.0
    center = size / 2 + rng.uniform(-1.0, 1.0, 3) * np.maximum(size / 2 - 1.0 - reach, 0.0)
    local = (grid - center) @ rotation
    core_scale = rng.uniform(0.45, 0.62)
    core_shift = rng.uniform(-0.15, 0.15, 3) * radii
    outer = ((local / radii) ** 2).sum(axis=-1) <= 1.0
    inner = (((local - core_shift) / (radii * core_scale)) ** 2).sum(axis=-1) <= 1.0
    label = np.zeros(shape, dtype=np.uint8)
    label[outer] = 1
    label[outer & inner] = 2
    if not (label == 2).any():  # tiny rare structures: keep at least one core voxel
        core_center = np.rint(center + core_shift @ rotation.T).astype(int)
        label[tuple(np.clip(core_center, 0, np.asarray(shape) - 1))] = 2

    # Appearance: partial-volume blur, background texture, multiplicative bias field, noise.
    if rare:
        levels, noise_sd = (1.0, rng.uniform(1.3, 1.45), rng.uniform(1.65, 1.85)), rng.uniform(0.25, 0.35)
    else:
        levels, noise_sd = (1.0, rng.uniform(1.8, 2.2), rng.uniform(2.7, 3.3)), rng.uniform(0.1, 0.2)
    tissue = ndimage.gaussian_filter(np.asarray(levels)[label], sigma=0.6)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3.0)
    tissue += 0.12 * texture / max(float(texture.std()), 1e-12)
    unit = grid / (size - 1) * 2.0 - 1.0
    bias = np.exp(unit @ rng.uniform(-0.25, 0.25, 3) + rng.uniform(-0.15, 0.15) * (unit**2).sum(axis=-1))
    image = tissue * bias + rng.normal(scale=noise_sd, size=shape)

    scale = float(np.exp(rng.uniform(np.log(10.0), np.log(1e4))))
    image = image * scale + rng.uniform(0.0, 0.5) * scale
    if rng.random() < 0.3:
        lo, hi = float(image.min()), float(image.max())
        return np.rint((image - lo) / max(hi - lo, 1e-12) * rng.uniform(120, 255)).astype(np.uint8), label
    return image.astype(np.float32), label
