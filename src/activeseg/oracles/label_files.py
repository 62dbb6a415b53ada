"""Label files from a person: validated before anything is written, kept only inside the queried region.

:func:`check_label` is shared by ``activeseg ingest`` and the server's PUT: a readable NIfTI (decompressed size
bounded), a 3D volume on the image's grid (shape and affine), finite integer values in range. :func:`native_region`
maps a case's queried units from the training grid to the image's native grid, where the annotator works, and
:func:`take_region` keeps a label only there.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from activeseg.acquisition.units import IGNORE, is_whole_volume, labelled_mask, unit_from_key
from activeseg.data.geometry import Geometry
from activeseg.data.io import read_volume
from activeseg.data.splits import RunData

AFFINE_ATOL = 1e-4
"""Largest allowed difference between a label's affine and its image's (the dataset check uses the same)."""


class LabelFileError(ValueError):
    """A label file that cannot be accepted; the message names the file."""


def safe_name(case_id: str) -> str:
    """A file-system-safe folder name for a case (export folders); ingest maps it back through the queue."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)
    return "_" + name if name.startswith(".") or not name else name


@dataclass(frozen=True)
class Reference:
    """What a case's label must match: its image's native shape and affine, and the number of classes."""

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]
    num_classes: int

    @property
    def max_nifti_bytes(self) -> int:
        """The largest uncompressed NIfTI a label of this shape can be (8 bytes a voxel, generous header room)."""
        return int(np.prod(self.shape)) * 8 + (1 << 20)


def reference_for(data: RunData, case_id: str) -> Reference:
    """The native grid of a pool case, read from the dataset."""
    volume = read_volume(data.pool.case(case_id).image)
    shape = tuple(int(s) for s in volume.array.shape[:3])
    return Reference((shape[0], shape[1], shape[2]), volume.affine, data.num_classes)


def check_label(name: str, payload: bytes, reference: Reference) -> npt.NDArray[np.uint8]:
    """Parse and validate a label NIfTI (``.nii`` or ``.nii.gz`` bytes); ``name`` is used in every error.

    Checks: readable NIfTI (decompressed size bounded), a 3D volume, the image's shape and affine, finite integer
    values in ``0 .. num_classes - 1``. Returns the label as uint8 on the native grid.
    """
    try:
        raw = _gunzip(payload, reference.max_nifti_bytes) if payload[:2] == b"\x1f\x8b" else payload
        image = _nifti_from_bytes(raw)
        array = np.asarray(image.dataobj)
    except LabelFileError as err:
        raise LabelFileError(f"{name}: {err}") from None
    except Exception as err:
        raise LabelFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise LabelFileError(f"{name}: label is {array.ndim}D with shape {array.shape}; expected a 3D volume")
    if tuple(array.shape) != reference.shape:
        raise LabelFileError(f"{name}: label shape {tuple(array.shape)} differs from the image's {reference.shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.allclose(affine, reference.affine, atol=AFFINE_ATOL):
        worst = float(np.abs(affine - reference.affine).max())
        raise LabelFileError(
            f"{name}: label affine differs from the image's (largest difference {worst:.3g}); "
            "save the label on the image's voxel grid"
        )
    if array.dtype.kind not in "biuf":
        raise LabelFileError(f"{name}: unsupported voxel type {array.dtype}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise LabelFileError(f"{name}: label has NaN or infinite values")
        if (array != np.round(array)).any():
            raise LabelFileError(f"{name}: label has non-integer values")
    values = np.unique(array).tolist()
    bad = [v for v in values if not 0 <= v < reference.num_classes]
    if bad:
        allowed = f"0..{reference.num_classes - 1}"
        raise LabelFileError(f"{name}: label values {[int(v) for v in bad[:10]]} are not allowed (allowed: {allowed})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _gunzip(payload: bytes, limit: int) -> bytes:
    """Decompress gzip bytes, refusing more than ``limit`` bytes of output (a decompression bomb)."""
    out = bytearray()
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = payload
    while data:
        out += decompressor.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise LabelFileError(f"decompresses to more than {limit} bytes, too large for this image")
        data = decompressor.unconsumed_tail
        if decompressor.eof:
            break
    if not decompressor.eof:
        raise LabelFileError("the gzip data is truncated")
    return bytes(out)


def _nifti_from_bytes(raw: bytes) -> Any:
    errors = []
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return kind.from_bytes(raw)
        except Exception as err:
            errors.append(f"{type(err).__name__}: {err}")
    raise LabelFileError(f"not a readable NIfTI file ({errors[0][:200]})")


def take_region(
    label: npt.NDArray[np.uint8], region: npt.NDArray[np.bool_] | None, ignore: int = IGNORE
) -> tuple[npt.NDArray[np.uint8], int]:
    """The part of ``label`` inside the queried region (``ignore`` elsewhere) and how many labelled (non-zero)
    voxels lay outside it. ``region`` is a boolean mask of the label's shape, or None for a whole volume."""
    if region is None:
        return label, 0
    outside = int(np.count_nonzero(label[~region]))
    return np.where(region, label, np.uint8(ignore)).astype(np.uint8), outside


def native_region(units: Sequence[str], geometry: Geometry) -> npt.NDArray[np.bool_] | None:
    """The voxels of a case's image that a person labels for its queried units, or None for a whole volume.

    Units are boxes on the planned grid; the region is what the case's geometry maps them to on the native grid
    (:meth:`~activeseg.data.geometry.Geometry.native_region`), so a label drawn there and brought back fills them.
    """
    if any(is_whole_volume(key) for key in units):
        return None
    shape = geometry.shape
    return geometry.native_region(labelled_mask([unit_from_key(key, shape) for key in units], shape))


def read_submission_file(path: Path) -> bytes:
    """The bytes of a label file on disk (a clear error naming it if it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise LabelFileError(f"{path}: cannot read ({err.strerror or err})") from None
