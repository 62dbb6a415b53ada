"""Intensity normalisation, centre pad/crop to a fixed shape, and a content-addressed on-disk cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from activeseg.artifacts import write_atomic
from activeseg.data.dataset import Case, Dataset
from activeseg.data.io import read_volume

logger = logging.getLogger(__name__)

# Bump whenever normalise_intensity / center_pad_or_crop / the stored format change.
PREPROCESS_VERSION = 1
Shape3 = tuple[int, int, int]


def normalise_intensity(image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Clip to the volume's 0.5–99.5 percentiles, then z-score; a constant volume gives zeros."""
    data = np.asarray(image, dtype=np.float64)
    if data.size == 0:
        return np.zeros(data.shape, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("normalise_intensity: image contains NaN or infinite values")
    low, high = np.percentile(data, [0.5, 99.5])
    clipped = np.clip(data, low, high)
    if high <= low:
        return np.zeros(data.shape, dtype=np.float32)
    out: npt.NDArray[np.float64] = (clipped - clipped.mean()) / clipped.std()
    return out.astype(np.float32)


@dataclass(frozen=True)
class CropInfo:
    """How :func:`center_pad_or_crop` mapped the last three axes from ``original_shape`` to ``shape``.

    Per axis exactly one of ``pad_before`` / ``crop_start`` is non-zero (or both are zero).
    """

    original_shape: Shape3
    shape: Shape3
    pad_before: Shape3
    crop_start: Shape3

    @classmethod
    def for_shapes(cls, original_shape: tuple[int, ...], shape: tuple[int, ...]) -> CropInfo:
        """The centred pad/crop taking ``original_shape`` to ``shape``."""
        if len(original_shape) != 3 or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"need two 3D shapes and positive target sizes, got {original_shape} -> {shape}")
        pad = tuple(max(t - o, 0) // 2 for o, t in zip(original_shape, shape, strict=True))
        crop = tuple(max(o - t, 0) // 2 for o, t in zip(original_shape, shape, strict=True))
        return cls(_shape3(original_shape), _shape3(shape), _shape3(pad), _shape3(crop))

    def invert(self, array: npt.NDArray[Any], fill: float = 0) -> npt.NDArray[Any]:
        """Map an array of ``shape`` (last three axes) back to ``original_shape``.

        Voxels that the crop removed get ``fill``; leading (e.g. channel) axes are kept.
        """
        if array.ndim < 3 or tuple(array.shape[-3:]) != self.shape:
            raise ValueError(f"expected last three axes {self.shape}, got {array.shape}")
        return _place(array, self.original_shape, fill, self.pad_before, self.crop_start)

    def invert_box(self, box: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        """Map a ``[start, stop)`` box on ``shape`` back to ``original_shape``: the original voxels it covers (an
        empty range, start == stop, on an axis where it lies in the padding only)."""
        ranges = []
        for (start, stop), pad, cut, size in zip(
            box, self.pad_before, self.crop_start, self.original_shape, strict=True
        ):
            low, high = max(start - pad + cut, 0), min(stop - pad + cut, size)
            ranges.append((low, max(high, low)))
        return tuple(ranges)


def center_pad_or_crop(
    array: npt.NDArray[Any], shape: tuple[int, int, int], fill: float = 0
) -> tuple[npt.NDArray[Any], CropInfo]:
    """Centre-pad (with ``fill``) and/or centre-crop the last three axes of ``array`` to ``shape``."""
    if array.ndim < 3:
        raise ValueError(f"expected at least 3 dimensions, got shape {array.shape}")
    info = CropInfo.for_shapes(tuple(array.shape[-3:]), tuple(shape))
    return _place(array, info.shape, fill, info.crop_start, info.pad_before), info


def _place(
    array: npt.NDArray[Any], shape: Shape3, fill: float, src_start: Shape3, dst_start: Shape3
) -> npt.NDArray[Any]:
    """Copy the overlap of ``array`` (from ``src_start``) into a ``fill``-ed array (at ``dst_start``)."""
    out = np.full((*array.shape[:-3], *shape), fill, dtype=array.dtype)
    sizes = [min(a, b) for a, b in zip(array.shape[-3:], shape, strict=True)]
    src: tuple[Any, ...] = (Ellipsis, *(slice(s, s + n) for s, n in zip(src_start, sizes, strict=True)))
    dst: tuple[Any, ...] = (Ellipsis, *(slice(d, d + n) for d, n in zip(dst_start, sizes, strict=True)))
    out[dst] = array[src]
    return out


@dataclass(frozen=True)
class Prepared:
    """A preprocessed case: normalised image (1, D, H, W) float32 and label (D, H, W) uint8."""

    image_C_D_H_W: npt.NDArray[np.float32]
    label_D_H_W: npt.NDArray[np.uint8]
    foreground_lost: int
    original_shape: Shape3


@dataclass(frozen=True)
class CacheStats:
    """What :meth:`PreprocessedCache.prepare` did; ``foreground_lost`` sums over all cases."""

    computed: int
    reused: int
    foreground_lost: int


def prepare_case(case: Case, shape: Shape3) -> Prepared:
    """Read, normalise and centre pad/crop one case (no caching)."""
    image = read_volume(case.image).array
    label = read_volume(case.label).array
    if label.dtype.kind == "f":
        label = np.rint(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"{case.label}: label values must lie in 0..255 to be stored as uint8")
    label = label.astype(np.uint8)
    norm, _ = center_pad_or_crop(normalise_intensity(image), shape, fill=0.0)
    cropped, _ = center_pad_or_crop(label, shape, fill=0)
    lost = int(np.count_nonzero(label)) - int(np.count_nonzero(cropped))
    return Prepared(norm[None], cropped, lost, _shape3(image.shape))


class PreprocessedCache:
    """One ``.npz`` per case under ``cache_dir/preprocessed``, keyed by file content, shape and version.

    Entries are written atomically and verified (stored key, CRC, shapes) before being trusted;
    :meth:`load` reads one case from disk per call and keeps nothing in memory except the keys.
    """

    def __init__(self, cache_dir: Path, shape: tuple[int, int, int]) -> None:
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be three positive sizes, got {shape}")
        self.cache_dir = Path(cache_dir)
        self.directory = self.cache_dir / "preprocessed"
        self.shape: Shape3 = _shape3(shape)
        # case id -> (image stat, label stat, key); stats let load() detect files changed since hashing.
        self._keys: dict[str, tuple[tuple[str, int, int], tuple[str, int, int], str]] = {}

    def prepare(self, dataset: Dataset, progress: Callable[[int, int], None] | None = None) -> CacheStats:
        """Compute the entries that are missing or invalid; reuse the rest."""
        self.directory.mkdir(parents=True, exist_ok=True)
        computed = reused = lost_total = 0
        for n, case in enumerate(dataset.cases, start=1):
            key = self._key(case, rehash=True)
            path = self._entry_path(case, key)
            prepared = self._read_entry(path, key)
            if prepared is None:
                prepared = prepare_case(case, self.shape)
                self._write_entry(path, key, prepared)
                computed += 1
            else:
                reused += 1
            if prepared.foreground_lost:
                logger.warning(
                    "case %s: cropping to %s removes %d foreground voxels",
                    case.case_id,
                    self.shape,
                    prepared.foreground_lost,
                )
            lost_total += prepared.foreground_lost
            if progress is not None:
                progress(n, len(dataset.cases))
        return CacheStats(computed, reused, lost_total)

    def load(self, case: Case) -> Prepared:
        """Load one preprocessed case from disk (computing and storing it if missing or invalid)."""
        key = self._key(case, rehash=False)
        path = self._entry_path(case, key)
        prepared = self._read_entry(path, key)
        if prepared is None:
            logger.info("case %s not in cache %s (or invalid): computing it", case.case_id, self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
            prepared = prepare_case(case, self.shape)
            self._write_entry(path, key, prepared)
        return prepared

    def _key(self, case: Case, *, rehash: bool) -> str:
        stats = (_file_stat(case.image), _file_stat(case.label))
        memo = self._keys.get(case.case_id)
        if not rehash and memo is not None and memo[:2] == stats:
            return memo[2]
        payload = {
            "version": PREPROCESS_VERSION,
            "shape": list(self.shape),
            "image": _sha256_file(case.image),
            "label": _sha256_file(case.label),
        }
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self._keys[case.case_id] = (*stats, key)
        return key

    def _entry_path(self, case: Case, key: str) -> Path:
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", case.case_id)
        return self.directory / f"{safe_id}-{key[:24]}.npz"

    def _read_entry(self, path: Path, key: str) -> Prepared | None:
        """The entry at ``path`` if it exists and is intact, else None (a damaged file is removed)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_key = str(npz["key"])
                image = npz["image"]
                label = npz["label"]
                lost = int(npz["foreground_lost"])
                original = _shape3(tuple(int(s) for s in npz["original_shape"]))
            problem = (
                "stored key differs"
                if stored_key != key
                else "unexpected array shapes or types"
                if (image.shape, image.dtype, label.shape, label.dtype)
                != ((1, *self.shape), np.float32, self.shape, np.uint8)
                else ""
            )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            problem = f"unreadable: {type(exc).__name__}: {exc}"
        if problem:
            logger.warning("discarding invalid cache entry %s (%s)", path, problem)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return Prepared(image, label, lost, original)

    def _write_entry(self, path: Path, key: str, prepared: Prepared) -> None:
        def write(handle: IO[bytes]) -> None:
            np.savez(
                handle,
                key=np.array(key),
                image=prepared.image_C_D_H_W,
                label=prepared.label_D_H_W,
                foreground_lost=np.array(prepared.foreground_lost, dtype=np.int64),
                original_shape=np.array(prepared.original_shape, dtype=np.int64),
            )

        write_atomic(path, write)


def default_cache_dir() -> Path:
    """``$ACTIVESEG_CACHE`` if set, else ``~/.cache/activeseg``."""
    env = os.environ.get("ACTIVESEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "activeseg"


def _shape3(shape: tuple[int, ...]) -> Shape3:
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _file_stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
