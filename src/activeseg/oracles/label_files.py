"""Label files from a person: validated before anything is written, kept only inside the queried region.

:func:`check_label` is shared by ``activeseg ingest`` and the server's PUT: a readable NIfTI (decompressed size
bounded), a 3D volume on the image's grid (shape and affine), finite integer values in range. :func:`native_region`
maps a case's queried units from the training grid to the image's native grid, where the annotator works, and
:func:`take_region` keeps a label only there.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
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


HEADER_ROOM = 1 << 20
"""Bytes allowed before the voxels (header and extensions), and after them (trailing bytes that are ignored)."""
_HEADERS: dict[int, Any] = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_MAGIC = {348: b"n+1", 540: b"n+2"}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HASHED = re.compile(r"--[0-9a-f]{12}$")


def safe_name(case_id: str) -> str:
    """A file-system-safe folder name for a case (export folders, annotation packages); ingest maps it back
    through the queue.

    Injective: a case id that is already a plain name (letters, digits, ``._-``, at most 100 characters, not
    ending in what looks like this suffix) is kept; any other gets a hash of the id appended to its sanitised form,
    so ``"case a"`` and ``"case_a"`` never share a folder.
    """
    if _SAFE.match(case_id) and not _HASHED.search(case_id):
        return case_id
    name = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:80].lstrip(".") or "_"
    return f"{name}--{hashlib.sha256(case_id.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Reference:
    """What a case's label must match: its image's native shape and affine, and the number of classes."""

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]
    num_classes: int

    @property
    def max_nifti_bytes(self) -> int:
        """The largest uncompressed NIfTI a label of this shape can be (8 bytes a voxel, generous header room)."""
        return int(np.prod(self.shape)) * 8 + 2 * HEADER_ROOM

    @property
    def max_file_bytes(self) -> int:
        """The largest label file, gzip or not (gzip adds little more than 0.1% to data it cannot compress)."""
        return self.max_nifti_bytes + self.max_nifti_bytes // 256 + 4096


def reference_for(data: RunData, case_id: str) -> Reference:
    """The native grid of a pool case, read from the dataset."""
    volume = read_volume(data.pool.case(case_id).image)
    shape = tuple(int(s) for s in volume.array.shape[:3])
    return Reference((shape[0], shape[1], shape[2]), volume.affine, data.num_classes)


def check_label(name: str, payload: bytes, reference: Reference) -> npt.NDArray[np.uint8]:
    """Parse and validate a label NIfTI (``.nii`` or ``.nii.gz`` bytes); ``name`` is used in every error.

    The header is read first: a 3D volume of the image's shape, a supported voxel type, and a file no larger than
    that header describes, all checked before any voxel is decompressed or allocated (a header that claims
    2000³ voxels costs nothing). Then the image's affine, and finite integer values in ``0 .. num_classes - 1``;
    scale factors are applied to the distinct values only, never to a float64 copy of the volume. Returns the label
    as uint8 on the native grid.
    """
    try:
        header, voxels = _read_nifti(payload, reference)
        with np.errstate(all="ignore"):
            return _label_voxels(header, voxels, reference)
    except LabelFileError as err:
        raise LabelFileError(f"{name}: {err}") from None
    except Exception as err:
        raise LabelFileError(f"{name}: not a readable NIfTI file ({type(err).__name__}: {err})") from None


def _read_nifti(payload: bytes, reference: Reference) -> tuple[Any, npt.NDArray[Any]]:
    """The header and the raw voxels (disk type, image shape) of NIfTI bytes, read header first."""
    gzipped = payload[:2] == b"\x1f\x8b"
    if not gzipped and len(payload) > reference.max_nifti_bytes:
        raise LabelFileError(
            f"the file is {len(payload)} bytes, more than a label of this image can be ({reference.max_nifti_bytes})"
        )
    stream = _Gunzip(payload) if gzipped else None
    raw = stream.read(540) if stream is not None else payload[:540]
    header = _header(raw)
    shape = _shape(header, reference)
    dtype = _dtype(header)
    offset = _offset(header)
    size = offset + int(np.prod(shape)) * dtype.itemsize  # bounded: the shape is the image's
    if stream is not None:
        raw += stream.read(size + HEADER_ROOM + 1 - len(raw))
    else:
        raw = payload
    if len(raw) < size:
        raise LabelFileError(f"the file is truncated: its header describes {size} bytes, it holds {len(raw)}")
    if len(raw) > size + HEADER_ROOM:
        raise LabelFileError(
            f"decompresses to more than {size + HEADER_ROOM} bytes, more than its header describes ({size})"
        )
    voxels = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return header, voxels.reshape(reference.shape, order="F")


def _header(raw: bytes) -> Any:
    """A NIfTI-1 or NIfTI-2 header parsed without nibabel's checks (which print to stderr); its magic checked."""
    if len(raw) < 348:
        raise LabelFileError(f"not a readable NIfTI file (only {len(raw)} bytes, shorter than a NIfTI header)")
    sizes = (int.from_bytes(raw[:4], "little", signed=True), int.from_bytes(raw[:4], "big", signed=True))
    size = next((s for s in sizes if s in _HEADERS), None)
    if size is None or len(raw) < size:
        raise LabelFileError("not a readable NIfTI file (its first bytes are not a NIfTI-1 or NIfTI-2 header)")
    header = _HEADERS[size](binaryblock=raw[:size], check=False)
    magic = bytes(header["magic"].tobytes())[:3]
    if magic != _MAGIC[size]:
        raise LabelFileError(f"not a readable NIfTI file (magic {magic!r}; expected a single .nii file)")
    return header


def _shape(header: Any, reference: Reference) -> tuple[int, ...]:
    """The header's data shape: a 3D volume (trailing singleton dimensions allowed) of the image's shape."""
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : dim[0] + 1]):
        raise LabelFileError(f"not a readable NIfTI file (invalid dimensions {dim})")
    shape = tuple(dim[1 : dim[0] + 1])
    squeezed = shape
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if len(squeezed) != 3:
        raise LabelFileError(f"label is {len(squeezed)}D with shape {squeezed}; expected a 3D volume")
    if squeezed != reference.shape:
        raise LabelFileError(f"label shape {squeezed} differs from the image's {reference.shape}")
    return shape


def _dtype(header: Any) -> np.dtype[Any]:
    try:
        dtype: np.dtype[Any] = np.dtype(header.get_data_dtype())
    except Exception:
        raise LabelFileError(f"unsupported voxel type (NIfTI datatype code {int(header['datatype'])})") from None
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise LabelFileError(f"unsupported voxel type {dtype}")
    return dtype


def _offset(header: Any) -> int:
    """Where the voxels start; an offset inside the header is read as the smallest valid one (as nibabel does)."""
    offset = float(header["vox_offset"])
    if not np.isfinite(offset) or not 0 <= offset <= HEADER_ROOM:
        raise LabelFileError(f"not a readable NIfTI file (voxel offset {offset:g})")
    return max(int(offset), int(header.sizeof_hdr) + 4)


def _label_voxels(header: Any, voxels: npt.NDArray[Any], reference: Reference) -> npt.NDArray[np.uint8]:
    """The affine checked, then the values: each distinct value scaled (if the header scales) and checked."""
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.isfinite(affine).all() or not np.allclose(affine, reference.affine, atol=AFFINE_ATOL):
        worst = float(np.abs(affine - reference.affine).max())
        raise LabelFileError(
            f"label affine differs from the image's (largest difference {worst:.3g}); "
            "save the label on the image's voxel grid"
        )
    try:
        slope, inter = header.get_slope_inter()
    except Exception as err:
        raise LabelFileError(f"invalid scale factors ({err})") from None
    scaled = slope is not None and (slope, inter) != (1.0, 0.0)
    if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
        raise LabelFileError("label has NaN or infinite values")
    raw_values = np.unique(voxels)
    values = raw_values.astype(np.float64) * slope + inter if scaled else raw_values.astype(np.float64)
    if not np.isfinite(values).all():
        raise LabelFileError("label has NaN or infinite values")
    if (values != np.round(values)).any():
        raise LabelFileError("label has non-integer values")
    bad = [v for v in values.tolist() if not 0 <= v < reference.num_classes]
    if bad:
        allowed = f"0..{reference.num_classes - 1}"
        raise LabelFileError(f"label values {[int(v) for v in bad[:10]]} are not allowed (allowed: {allowed})")
    if not scaled and voxels.dtype.kind in "biu":
        return np.ascontiguousarray(voxels, dtype=np.uint8)
    label = np.zeros(voxels.shape, dtype=np.uint8)
    for raw, value in zip(raw_values.tolist(), values.tolist(), strict=True):
        if value:
            label[voxels == raw] = int(value)
    return label


class _Gunzip:
    """gzip bytes decompressed on demand, so that no more is inflated than is asked for (members may follow)."""

    def __init__(self, payload: bytes) -> None:
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._data = payload

    def read(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer only at the end of the data); LabelFileError if the data is truncated."""
        out = bytearray()
        while len(out) < n:
            if self._inflate.eof:
                rest = self._inflate.unused_data
                if not rest.strip(b"\0"):  # the end (gzip tools allow zero padding)
                    break
                self._inflate, self._data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            chunk = self._inflate.decompress(self._data, n - len(out))
            self._data = self._inflate.unconsumed_tail
            if not chunk and not self._data and not self._inflate.eof:
                raise LabelFileError("the gzip data is truncated")
            out += chunk
        return bytes(out)


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


def read_submission_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a label file on disk, refusing one that is not a regular file or is larger than ``limit``
    bytes before reading it (a clear error naming it)."""
    try:
        with Path(path).open("rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise LabelFileError(f"{path}: not a regular file")
            if limit is not None and status.st_size > limit:
                raise LabelFileError(
                    f"{path}: the file is {status.st_size} bytes, more than a label of this image can be ({limit})"
                )
            data = handle.read(limit + 1 if limit is not None else -1)
    except OSError as err:
        raise LabelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    if limit is not None and len(data) > limit:
        raise LabelFileError(f"{path}: the file grew past {limit} bytes while it was read")
    return data
