"""Preprocessing by the plan, and a content-addressed cache of memory-mapped planned arrays.

A case is read (every channel), cropped to its non-zero box (labels always kept), normalised per channel as the plan
says, reoriented to RAS and resampled to the plan's spacing (:class:`~activeseg.data.geometry.Geometry`). Its
label comes through the same geometry with nearest neighbours. A foreground class present in the native label but
absent from the planned one is an error naming the case.

Each entry is a folder ``<cache>/planned/<case>-<key>/`` holding ``image.npy`` (C×D×H×W float32), ``label.npy``
(D×H×W uint8), ``geometry.json`` and ``key.json``; the key hashes the files' bytes and the plan's preprocessing part,
so a changed file or plan is a new entry. Entries are written to a temporary folder and renamed into place, and
arrays are opened memory-mapped: a training patch or a sliding window reads only its own voxels.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.data.dataset import Case, Dataset
from activeseg.data.errors import DatasetError
from activeseg.data.fingerprint import crop_box
from activeseg.data.geometry import Geometry
from activeseg.data.io import check_label_shape, read_image, read_volume
from activeseg.data.plan import Normalisation, Plan

PREPROCESS_VERSION = 2


@dataclass(frozen=True)
class Prepared:
    """A case on its planned grid: image (C×D×H×W float32), label (D×H×W uint8) and the geometry between grids."""

    image_C_D_H_W: npt.NDArray[np.float32]
    label_D_H_W: npt.NDArray[np.uint8]
    geometry: Geometry


def normalise(channel_X_Y_Z: npt.NDArray[Any], scheme: Normalisation) -> npt.NDArray[np.float32]:
    """One channel's intensities as the plan says: CT clipped to the global window then z-scored globally, any
    other modality z-scored over this volume (a constant volume gives zeros)."""
    data = np.asarray(channel_X_Y_Z, dtype=np.float64)
    if scheme.scheme == "ct":
        assert scheme.clip is not None
        return np.asarray((np.clip(data, *scheme.clip) - scheme.mean) / scheme.std, dtype=np.float32)
    std = float(data.std()) if data.size else 0.0
    if std <= 0:
        return np.zeros(data.shape, dtype=np.float32)
    return np.asarray((data - data.mean()) / std, dtype=np.float32)


def prepare_case(case: Case, plan: Plan) -> Prepared:
    """Read, crop, normalise, reorient and resample one case (no caching); DatasetError names a lost class."""
    check_label_shape(case)
    image = read_image(case)
    label = np.asarray(read_volume(case.label).array)
    if label.dtype.kind == "f":
        label = np.rint(label)
    if label.size and (label.min() < 0 or label.max() > 254):
        raise DatasetError(f"{case.label}: label values must lie in 0..254 (255 marks unlabelled voxels)")
    label = label.astype(np.uint8)
    if image.array.shape[0] != plan.channels:
        raise DatasetError(f"{case.case_id}: {image.array.shape[0]} channels, the plan expects {plan.channels}")
    box = crop_box(image.array, label, plan.crop)
    geometry = Geometry.plan(label.shape, image.affine, plan.target_spacing, tuple(map(tuple, box)))  # type: ignore[arg-type]
    cut = (slice(box[0][0], box[0][1]), slice(box[1][0], box[1][1]), slice(box[2][0], box[2][1]))
    normalised = np.zeros(image.array.shape, dtype=np.float32)
    for c, scheme in enumerate(plan.normalisation):
        normalised[c][cut] = normalise(image.array[c][cut], scheme)
    planned_label = geometry.label_to_planned(label)
    lost = lost_classes(label, planned_label, geometry)
    if lost:
        raise DatasetError(
            f"{case.case_id}: planning at {list(plan.target_spacing)} mm would drop labelled voxels ({lost}); "
            "set plan.target_spacing finer"
        )
    return Prepared(np.asarray(geometry.to_planned(normalised), dtype=np.float32), planned_label, geometry)


def lost_classes(native: npt.NDArray[np.uint8], planned: npt.NDArray[np.uint8], geometry: Geometry) -> str:
    """What the planned label lost of the native one: a class that vanished, or (without interpolation) any
    voxel; empty if nothing."""
    native_values, native_counts = np.unique(native, return_counts=True)
    planned_counts = dict(zip(*np.unique(planned, return_counts=True), strict=True))
    problems = []
    for value, count in zip(native_values, native_counts, strict=True):
        if value == 0:
            continue
        kept = int(planned_counts.get(value, 0))
        if kept == 0 or (not geometry.resampled and kept != count):
            problems.append(f"class {int(value)}: {int(count)} native voxels, {kept} planned")
    return "; ".join(problems)


class PlannedCache:
    """Planned arrays of a dataset's cases under ``cache_dir/planned`` (see the module docstring)."""

    def __init__(self, cache_dir: Path, plan: Plan) -> None:
        self.directory = Path(cache_dir) / "planned"
        self.plan = plan
        self._plan_key = json.dumps(plan.preprocessing_key(), sort_keys=True)
        self._keys: dict[str, tuple[tuple[tuple[str, int, int], ...], str]] = {}

    def prepare(self, dataset: Dataset, progress: Callable[[int, int], None] | None = None) -> None:
        """Compute every missing entry; DatasetError lists every case that cannot be planned (those are skipped,
        the others stay cached)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        problems = []
        for n, case in enumerate(dataset.cases, start=1):
            try:
                self._entry(case, rehash=True)
            except DatasetError as err:
                problems.append(str(err))
            if progress is not None:
                progress(n, len(dataset.cases))
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems[:20])
            raise DatasetError(f"{len(problems)} case(s) of {dataset.root} cannot be planned:\n{listed}")

    def load(self, case: Case) -> Prepared:
        """One case, memory-mapped (computed first if it is missing or damaged)."""
        return self._entry(case, rehash=False)

    def _entry(self, case: Case, rehash: bool) -> Prepared:
        key = self._key(case, rehash)
        folder = self.directory / f"{re.sub(r'[^A-Za-z0-9._-]', '_', case.case_id)}-{key[:24]}"
        opened = self._open(folder, key)
        if opened is not None:
            return opened
        shutil.rmtree(folder, ignore_errors=True)
        prepared = prepare_case(case, self.plan)
        staging = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{folder.name}."))
        try:
            np.save(staging / "image.npy", prepared.image_C_D_H_W)
            np.save(staging / "label.npy", prepared.label_D_H_W)
            (staging / "geometry.json").write_text(json.dumps(prepared.geometry.to_json()))
            (staging / "key.json").write_text(json.dumps({"key": key}))
            staging.replace(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not folder.exists():  # a concurrent writer did not win either: a real failure
                raise
        opened = self._open(folder, key)
        assert opened is not None, folder
        return opened

    @staticmethod
    def _open(folder: Path, key: str) -> Prepared | None:
        try:
            if json.loads((folder / "key.json").read_text())["key"] != key:
                return None
            image = np.load(folder / "image.npy", mmap_mode="r")
            label = np.load(folder / "label.npy", mmap_mode="r")
            geometry = Geometry.from_json(json.loads((folder / "geometry.json").read_text()))
        except (OSError, ValueError, KeyError):
            return None
        if image.ndim != 4 or image.dtype != np.float32 or label.dtype != np.uint8:
            return None
        if tuple(image.shape[1:]) != geometry.shape or tuple(label.shape) != geometry.shape:
            return None
        return Prepared(image, label, geometry)

    def _key(self, case: Case, rehash: bool) -> str:
        files = (*case.images, case.label)
        stats = tuple(_file_stat(p) for p in files)
        memo = self._keys.get(case.case_id)
        if not rehash and memo is not None and memo[0] == stats:
            return memo[1]
        payload = {"version": PREPROCESS_VERSION, "plan": self._plan_key, "files": [file_sha256(p) for p in files]}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self._keys[case.case_id] = (stats, key)
        return key


def default_cache_dir() -> Path:
    """``$ACTIVESEG_CACHE`` if set, else ``~/.cache/activeseg``."""
    env = os.environ.get("ACTIVESEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "activeseg"


def _file_stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
