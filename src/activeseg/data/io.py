"""Reading and writing 3D volumes (NIfTI via nibabel, NRRD/MHA via SimpleITK).

Arrays are always in (x, y, z) voxel order and affines map voxel indices to RAS+ world
coordinates, as nibabel does, whichever format the file is in.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from activeseg.data.errors import DatasetError

SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = "_0000"
# ITK uses LPS+ world coordinates, nibabel RAS+: the first two world axes change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MAX_VOLUME_BYTES = 4 << 30
"""The most memory one volume may take (voxels × bytes a voxel, in the file's type and, when a NIfTI header scales
its values, as float64 too): a header that claims more is refused before anything is allocated."""
MAX_GZIP_RATIO = 1032
"""deflate cannot compress more than 1032:1, so a .nii.gz holds at most this many bytes per byte of file."""
# "Exception thrown in SimpleITK ImageFileReader_Execute: /src/x.cxx:490: ITK ERROR: MetaImageIO(0x…): "
_ITK_BOILERPLATE = re.compile(r"^.*?(ITK ERROR: \w+\(0x[0-9a-fA-F]+\):|sitk::ERROR:)\s*")


@dataclass(frozen=True)
class Volume:
    """A voxel array in (x, y, z) order and its 4x4 voxel-to-RAS affine (float64)."""

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]


def supported_suffix(path: Path) -> str | None:
    """The supported suffix that ``path`` ends with (case-insensitive), or None."""
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def case_id_from_path(path: Path) -> str:
    """File name minus its supported suffix and nnU-Net's ``_0000`` channel suffix."""
    suffix = supported_suffix(path)
    if suffix is None:
        raise DatasetError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    stem = path.name[: -len(suffix)]
    return stem.removesuffix(_CHANNEL_SUFFIX) or stem


def read_volume(path: Path) -> Volume:
    """Read a volume; trailing singleton dimensions beyond the third are squeezed.

    Raises DatasetError naming the file for any failure (missing, truncated, not an image,
    unsupported extension).
    """
    path = Path(path)
    suffix = supported_suffix(path)
    if suffix is None:
        raise DatasetError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")
    if not path.exists():
        raise DatasetError(f"{path}: file does not exist")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    try:
        volume = _read_nifti(path) if suffix in _NIFTI_SUFFIXES else _read_itk(path)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read: {_describe_read_error(exc)}") from exc
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Volume(array, volume.affine)


def read_image(case: Any) -> Volume:
    """Every channel of a case's image as one channels-first array (C, x, y, z) with the first file's affine: the
    channel files in order, or a 4D image's last axis."""
    first = read_volume(case.image)
    if first.array.ndim == 4:
        return Volume(np.moveaxis(first.array, 3, 0), first.affine)
    rest = [read_volume(path).array for path in case.channels]
    return Volume(np.stack([first.array, *rest]), first.affine)


def header_shape(path: Path) -> tuple[int, ...]:
    """The array shape a file's header declares (NIfTI only, without reading voxels; others are read)."""
    path = Path(path)
    if supported_suffix(path) in _NIFTI_SUFFIXES:
        try:
            header: Any = nib.load(str(path))
            shape = tuple(int(s) for s in header.shape)
        except Exception:
            return read_volume(path).array.shape
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        return shape
    return tuple(read_volume(path).array.shape)


def check_label_shape(case: Any) -> None:
    """DatasetError naming the label file when its header's shape is not the image's, before any voxel is read."""
    image_shape, label_shape = header_shape(case.image)[:3], header_shape(case.label)
    if label_shape != image_shape:
        raise DatasetError(
            f"{case.label}: label shape {label_shape} does not match the image's {image_shape} ({case.image})"
        )


def write_volume(path: Path, array: npt.ArrayLike, affine: npt.ArrayLike) -> None:
    """Write ``array`` ((x, y, z) order) with a voxel-to-RAS ``affine`` to .nii(.gz), .nrrd or .mha."""
    path = Path(path)
    suffix = supported_suffix(path)
    data = np.asarray(array)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if suffix in _NIFTI_SUFFIXES:
        dtype = data.dtype
        if dtype.kind in "iu" and dtype.itemsize == 8:  # NIfTI int64 is poorly supported by other tools
            small = np.int32 if dtype.kind == "i" else np.uint32
            info = np.iinfo(small)
            if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
                dtype = np.dtype(small)
        nifti1: Any = nib.Nifti1Image  # nibabel is untyped
        img = nifti1(data, aff, dtype=dtype)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(path))
    elif suffix is not None:
        if data.ndim != 3:
            raise ValueError(f"{path}: only 3D arrays can be written as {suffix}, got shape {data.shape}")
        image: Any = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
        lps = _LPS_TO_RAS @ aff[:3, :]
        spacing = np.linalg.norm(lps[:, :3], axis=0)
        if np.any(spacing == 0):
            raise ValueError(f"{path}: affine has a zero-length axis: {aff.tolist()}")
        image.SetSpacing([float(s) for s in spacing])
        image.SetDirection([float(d) for d in (lps[:, :3] / spacing).ravel()])
        image.SetOrigin([float(o) for o in lps[:, 3]])
        sitk.WriteImage(image, str(path), True)
    else:
        raise ValueError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def nifti_gz(
    array: npt.NDArray[Any], affine: npt.NDArray[np.float64], display: tuple[float, float] | None = None
) -> bytes:
    """A NIfTI-1 volume as deterministic gzip bytes (sform and qform set to ``affine``, opened by Slicer/ITK-SNAP);
    ``display`` sets the header's cal_min/cal_max, the range viewers colour."""
    nifti1: Any = nib.Nifti1Image  # nibabel is untyped
    image = nifti1(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if display is not None:
        image.header["cal_min"], image.header["cal_max"] = display
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _read_nifti(path: Path) -> Volume:
    img = nib.load(str(path), mmap=False)  # the header only: the voxels are read below
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DatasetError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    _check_nifti_size(path, img)
    array = np.asanyarray(img.dataobj)
    return Volume(np.asarray(array), np.asarray(img.affine, dtype=np.float64))


def _check_nifti_size(path: Path, img: Any) -> None:
    """Refuse, before reading any voxel, a header whose voxels the file cannot hold or memory should not."""
    shape = tuple(int(s) for s in img.header.get_data_shape())
    disk = int(np.prod(shape, dtype=np.float64)) * np.dtype(img.header.get_data_dtype()).itemsize
    scaled = (img.dataobj.slope, img.dataobj.inter) != (1.0, 0.0)
    needed = disk + (int(np.prod(shape, dtype=np.float64)) * 8 if scaled else 0)
    claim = f"its header claims {'x'.join(map(str, shape))} voxels of {img.header.get_data_dtype()}"
    if needed > MAX_VOLUME_BYTES:
        raise DatasetError(f"{path}: {claim}, {needed} bytes in memory, more than the limit of {MAX_VOLUME_BYTES}")
    size = path.stat().st_size
    gzipped = path.name.lower().endswith(".gz")
    holds = size * MAX_GZIP_RATIO + (1 << 16) if gzipped else size - int(img.dataobj.offset)
    if disk > holds:
        raise DatasetError(
            f"{path}: the file is truncated or its header is corrupt: {claim} ({disk} bytes), but the "
            f"{size}-byte file {'can hold at most' if gzipped else 'holds'} {max(holds, 0)}"
        )


def _check_itk_size(path: Path) -> None:
    """Refuse, before reading any voxel, an ITK header that claims more memory than one volume may take."""
    itk: Any = sitk  # SimpleITK is untyped
    reader = itk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    voxels = int(np.prod(reader.GetSize(), dtype=np.float64)) * int(reader.GetNumberOfComponents())
    tiny = itk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    needed = voxels * sitk.GetArrayViewFromImage(tiny).itemsize
    if needed > MAX_VOLUME_BYTES:
        raise DatasetError(
            f"{path}: its header claims {'x'.join(map(str, reader.GetSize()))} voxels, {needed} bytes in memory, "
            f"more than the limit of {MAX_VOLUME_BYTES}"
        )


def _read_itk(path: Path) -> Volume:
    _check_itk_size(path)
    image: Any = sitk.ReadImage(str(path))
    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, component])
    spatial = tuple(range(dim - 1, -1, -1))
    array = array.transpose(*spatial, *range(dim, array.ndim))
    n = min(dim, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:n, :n]
    lps = np.eye(4)
    lps[:n, :n] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[:n]
    lps[:n, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:n]
    affine = np.eye(4)
    affine[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    return Volume(array, affine)


def _describe_read_error(exc: Exception) -> str:
    detail = " ".join(str(exc).split())
    if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile) or (
        isinstance(exc, OSError) and detail.startswith("Expected")
    ):
        what = "the file is truncated or its compressed data is corrupt"
    elif isinstance(exc, nib.filebasedimages.ImageFileError):
        what = "not a recognisable NIfTI image (bad or missing header)"
    elif isinstance(exc, PermissionError):
        what = "permission denied"
    elif isinstance(exc, RuntimeError) and "itk" in detail.lower():
        what = "SimpleITK could not read it (corrupt, truncated or not an image)"
        detail = _ITK_BOILERPLATE.sub("", detail)
    else:
        what = "the file is corrupt or not an image"
    if len(detail) > 200:
        detail = detail[:200] + "…"
    return f"{what} [{type(exc).__name__}: {detail}]" if detail else f"{what} [{type(exc).__name__}]"
