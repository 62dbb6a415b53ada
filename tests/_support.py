"""Shared test helpers: where the real hippocampus data is, and a tiny but real run config."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from activeseg.config import RunConfig, config_from_dict
from activeseg.data.io import read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]


def hippocampus_root() -> Path:
    """``$ACTIVESEG_HIPPOCAMPUS`` or ``../shared/data/hippocampus`` beside the checkout."""
    return Path(os.environ.get("ACTIVESEG_HIPPOCAMPUS", REPO.parent / "shared" / "data" / "hippocampus"))


def hippocampus_subset(n: int) -> list[str]:
    """The first ``n`` hippocampus case ids."""
    return sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus_root() / "imagesTr").glob("*.nii.gz"))[:n]


def two_channel_hippocampus(base: Path, n: int) -> tuple[Path, Path]:
    """The first ``n`` hippocampus cases with two channels (the image, and its square root as a second modality),
    stored as nnU-Net channel files (``base/nnunet``: ``_0000``, ``_0001``) and as MSD 4D images (``base/msd``)."""
    files, stacked = base / "nnunet", base / "msd"
    for root in (files, stacked):
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        meta = {
            "channel_names": {"0": "MRI", "1": "sqrt"},
            "labels": {"0": "background", "1": "anterior", "2": "posterior"},
        }
        (root / "dataset.json").write_text(json.dumps(meta))
    for case_id in hippocampus_subset(n):
        image = read_volume(hippocampus_root() / "imagesTr" / f"{case_id}.nii.gz")
        second = np.sqrt(np.abs(image.array.astype(np.float32)))
        write_volume(files / "imagesTr" / f"{case_id}_0000.nii.gz", image.array, image.affine)
        write_volume(files / "imagesTr" / f"{case_id}_0001.nii.gz", second, image.affine)
        write_volume(stacked / "imagesTr" / f"{case_id}.nii.gz", np.stack([image.array, second], axis=-1), image.affine)
        for root in (files, stacked):
            shutil.copy(hippocampus_root() / "labelsTr" / f"{case_id}.nii.gz", root / "labelsTr" / f"{case_id}.nii.gz")
    return files, stacked


requires_hippocampus = pytest.mark.skipif(
    not (hippocampus_root() / "imagesTr").is_dir() and not os.environ.get("CI"),  # CI must have it: fail, not skip
    reason=f"hippocampus data not found at {hippocampus_root()}",
)


def tiny_config(cache_dir: Path, **sections: Any) -> RunConfig:
    """A real run on a 24-case hippocampus subset with a ~150k-parameter U-Net: seconds per round on 2 CPUs."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "data": {"root": str(hippocampus_root()), "max_cases": 24, "test_size": 6, "cache_dir": str(cache_dir)},
        "model": {"channels": [8, 16, 32, 64], "num_res_units": 1, "dropout": 0.2},
        "train": {"iterations": 12, "batch_size": 2, "device": "cpu"},
        "strategy": {"name": "bald", "mc_samples": 4, "mc_batch_size": 4},
        "loop": {"initial": 4, "per_round": 3, "rounds": 2},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return config_from_dict(raw)


def phantom_raw(root: Path, cache_dir: Path) -> dict[str, Any]:
    """A plain config dict for a run on 32³ phantoms with a ~30k-parameter U-Net (a second or two per round)."""
    return {
        "name": "phantom",
        "seed": 1,
        "data": {"root": str(root), "test_size": 4, "cache_dir": str(cache_dir)},
        "model": {"channels": [8, 16, 32], "strides": [2, 2]},
        "train": {"iterations": 8, "device": "cpu"},
        "strategy": {"name": "entropy", "mc_samples": 3, "mc_batch_size": 3},
        "loop": {"initial": 2, "per_round": 2, "rounds": 2},
    }


def load_nifti(path: Path) -> Any:
    """``nibabel.load``, typed as Any: nibabel's image classes are untyped (``.dataobj``, ``.affine``, ``.shape``)."""
    return nib.load(path)


def benchmark_script(name: str) -> Iterator[ModuleType]:
    """A script of ``benchmarks/`` imported as it runs (its folder on ``sys.path`` for its neighbours); a fixture's
    body: ``yield from benchmark_script("render_regimes")``."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


class RecordingReporter:
    """Keeps each progress bar: its description, its total and every advance."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int, list[int]]] = []

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        advances: list[int] = []
        self.bars.append((description, total, advances))
        yield advances.append

    def info(self, message: str) -> None:
        del message


def half_step_windows(shape: Sequence[int], roi: Sequence[int]) -> int:
    """How many windows MONAI's sliding window lays over ``shape`` at overlap 0.5, counted by hand: one along an
    axis the roi covers, else a window every half roi plus one flush with the end."""
    return math.prod(1 if s <= r else math.ceil((s - r) / (r // 2)) + 1 for s, r in zip(shape, roi, strict=True))
